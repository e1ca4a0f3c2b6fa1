"""Benchmark: privacy against utility on the real MNIST subset at IPC 10, on the CPU.

Runs, each distilled with the stated budget and evaluated with the standard ConvNet-128-3
(instance norm, SGD 0.01, momentum 0.9, wd 5e-4, DSA; stated epochs and model count) on the
subset's 997 test images:

* DP-PSG (``psg``) at ε = 1 and ε = 10 (δ = 1e-5, RDP accountant), and without noise (σ = 0,
  ε = ∞) — the ε recorded is the one Opacus's accountant reads back for the steps that ran;
* KIP-ρ (``kip``) at ρ = 0, 0.5, 0.9 (no (ε, δ): ρ is its privacy knob), with its KRR accuracy,
  with the ConvNet's random-feature NNGP; and at ρ = 0 with KIP's fully-connected NTK, for
  comparison;
* ``random`` and ``dm`` as references.

Also the step cost of DP-PSG against the same step without privacy: one matching step with the
private real gradient (Poisson batch, Opacus per-sample gradients, clipping, noise) against the
step with the plain mean gradient of the same batch, interleaved, CPU time of this process.

Writes experiments/results/bench_privacy.json and experiments/results/privacy_utility.png
(``--quick``: *_quick.json / *_quick.png, a smoke run of about a minute on a quiet machine).

    python experiments/bench_privacy.py                 # the README's table (CPU: long)
    python experiments/bench_privacy.py --quick         # smoke run
    python experiments/bench_privacy.py --only kip --keep-from experiments/results/bench_privacy.json
                                  # re-run KIP only, keeping the other rows of an earlier run
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _bench import (
    DEFAULT_MNIST,
    RESULTS,
    command_line,
    command_option,
    machine,
    require_mnist,
    write_json,
)

IPC = 10
DELTA = 1e-5

# DP-PSG's CPU budget (the reference runs 1,000 × 10 × 10 private steps with ConvNet-128 on a
# GPU): PSGConfig's defaults, stated here: 20 × 10 × 2 = 400 private steps with a ConvNet-32 for
# distillation; evaluation always uses the standard ConvNet-128-3.
PSG_BUDGET: dict[str, Any] = {
    "iterations": 20,
    "outer_loop": 10,
    "batch_loop": 2,
    "inner_loop": 5,
    "width": 32,
    "lr_img": 10.0,
    "clip": 0.1,
    "batch_real": 256,
}
KIP_BUDGET: dict[str, Any] = {
    "iterations": 200,
    "kernel": "convnet",
    "rf_width": 32,
    "rf_models": 4,
    "rf_predict_models": 16,
    "batch_target": 1000,
}
KIP_FC = {"kernel": "ntk", "batch_target": 3000}  # the FC comparison row: same steps
DM_BUDGET: dict[str, Any] = {"iterations": 200}
EVAL = {"epochs": 300, "num_models": 3}

QUICK_PSG = {"iterations": 2, "outer_loop": 2, "batch_loop": 1, "inner_loop": 2, "width": 16}
QUICK_KIP = {"iterations": 3, "batch_target": 200, "kernel": "convnet", "rf_models": 1}
QUICK_DM = {"iterations": 3, "batch_real": 32}
QUICK_EVAL = {"epochs": 5, "num_models": 1}


def runs(quick: bool) -> list[dict[str, Any]]:
    psg = QUICK_PSG if quick else PSG_BUDGET
    kip = QUICK_KIP if quick else KIP_BUDGET
    dm = QUICK_DM if quick else DM_BUDGET
    out: list[dict[str, Any]] = [
        {"label": "random", "method": "random", "family": "reference", "overrides": {}},
        {"label": "DM", "method": "dm", "family": "reference", "overrides": dict(dm)},
    ]
    for eps in (1.0, 10.0):
        out.append(
            {
                "label": f"DP-PSG ε={eps:g}",
                "method": "psg",
                "family": "psg",
                "overrides": psg | {"epsilon": eps, "delta": DELTA},
            }
        )
    out.append(
        {
            "label": "DP-PSG no noise",
            "method": "psg",
            "family": "psg",
            "overrides": psg | {"epsilon": math.inf, "noise_multiplier": 0.0},
        }
    )
    for rho in (0.0, 0.5, 0.9):
        out.append(
            {
                "label": f"KIP ρ={rho:g}",
                "method": "kip",
                "family": "kip",
                "overrides": kip | {"rho": rho},
            }
        )
    out.append(
        {
            "label": "KIP (FC NTK) ρ=0",
            "method": "kip",
            "family": "kip",
            "overrides": kip | KIP_FC | {"rho": 0.0},
        }
    )
    return out


FAMILIES = ("reference", "psg", "kip")


def kept_rows(path: Path, run: set[str], seed: int, budgets: dict, eval_cfg: Any) -> list[dict]:
    """The rows of an earlier bench_privacy.json for the families not run now, if it used the
    same seed, budgets (of those families) and evaluation; each says where it came from."""
    import json

    doc = json.loads(path.read_text())
    keep = set(FAMILIES) - run
    problems = []
    if doc.get("seed") != seed:
        problems.append(f"seed {doc.get('seed')} (now {seed})")
    if doc.get("eval") != dataclasses.asdict(eval_cfg):
        problems.append("another evaluation")
    for fam, key in (("psg", "psg"), ("reference", "dm")):
        if fam in keep and doc.get("budgets", {}).get(key) != budgets[key]:
            problems.append(f"another {key} budget")
    if problems:
        raise ValueError(f"{path}: cannot keep its rows: {', '.join(problems)}")
    out = []
    for r in doc.get("runs", []):
        if r.get("family") in keep:
            r = dict(r)
            r.setdefault("source", f"{path.name}: {doc.get('command', '')}")
            out.append(r)
    return out


def _accepted(method: str, overrides: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The overrides the method's config takes (a budget key it lacks is dropped, and said)."""
    from fedistill.distill import get_method

    names = {f.name for f in dataclasses.fields(get_method(method).config_cls)}
    kept = {k: v for k, v in overrides.items() if k in names}
    return kept, sorted(set(overrides) - names)


def run_one(spec, train, test, eval_cfg, seed, device) -> dict[str, Any]:
    from fedistill.distill import distill, methods
    from fedistill.evaluate import evaluate_set

    rec: dict[str, Any] = {k: spec[k] for k in ("label", "method", "family")}
    if spec["method"] not in methods():
        rec["skipped"] = f"method '{spec['method']}' is not registered in this checkout"
        logging.warning("%s: %s", spec["label"], rec["skipped"])
        return rec
    overrides, dropped = _accepted(spec["method"], spec["overrides"])
    rec["overrides"] = overrides
    if dropped:
        rec["dropped_overrides"] = dropped
    t0, c0 = time.perf_counter(), time.process_time()
    syn = distill(spec["method"], train, IPC, seed=seed, device=device, **overrides)
    rec["distill_seconds"] = round(time.perf_counter() - t0, 2)
    rec["distill_cpu_seconds"] = round(time.process_time() - c0, 2)
    rec["iterations"] = syn.meta.get("iterations")
    priv = syn.privacy or {}
    rec["privacy"] = priv
    rec["epsilon"] = priv.get("epsilon")  # None: no (ε, δ) guarantee (random, DM, KIP)
    rec["rho"] = priv.get("rho", spec["overrides"].get("rho"))
    t0 = time.perf_counter()
    res = evaluate_set(syn, test, eval_cfg, seed=seed, device=device)
    rec["eval_seconds"] = round(time.perf_counter() - t0, 2)
    rec["accuracy_mean"], rec["accuracy_std"] = res.mean, res.std
    rec["accuracies"] = res.accuracies
    if spec["method"] == "kip":
        from fedistill.distill.kip import kip_accuracy

        rec["krr_accuracy"] = kip_accuracy(syn, test, device=device)
    logging.info(
        "%-16s acc %.4f ± %.4f  ε %s  distill %.0fs",
        spec["label"],
        res.mean,
        res.std,
        rec["epsilon"],
        rec["distill_seconds"],
    )
    return rec


def reference_rows(
    path: Path, seed: int, dm_budget: dict[str, Any], eval_cfg: Any
) -> dict[str, dict[str, Any]]:
    """The ``random`` and ``DM`` rows of a bench_distill.json at IPC 10: the same sets
    (same method, budget and seed) evaluated with the same protocol, so not run twice."""
    import json

    doc = json.loads(path.read_text())
    used_seed = command_option(doc.get("command", ""), "seed", 0)  # bench_distill's default: 0
    out: dict[str, dict[str, Any]] = {}
    for r in doc.get("results", []):
        if r.get("ipc") != IPC or "error" in r or r["method"] not in ("random", "dm"):
            continue
        if r["method"] == "dm" and r["iterations"] != dm_budget.get("iterations"):
            continue
        if r.get("eval_epochs") != eval_cfg.epochs or used_seed != seed:
            continue
        label = "random" if r["method"] == "random" else "DM"
        out[label] = {
            "label": label,
            "method": r["method"],
            "family": "reference",
            "overrides": {"iterations": r["iterations"]} if r["iterations"] else {},
            "source": f"{path.name}: {doc.get('command', '')}",
            "distill_seconds": round(r["distill_seconds"], 2),
            "iterations": r["iterations"],
            "privacy": {},
            "epsilon": None,
            "rho": None,
            "accuracy_mean": r["accuracy_mean"],
            "accuracy_std": r["accuracy_std"],
            "accuracies": r["accuracies"],
            "eval_models": r.get("eval_models"),
        }
    return out


@functools.lru_cache(maxsize=2)
def _mnist(root: str, train: bool):
    from fedistill.data import load_dataset

    return load_dataset("mnist", root, train=train)


def _job(shared: tuple, spec: dict[str, Any]) -> dict[str, Any]:
    """One run in a worker process of :func:`fedistill.jobs.map_jobs` (one thread)."""
    root, eval_cfg, seed, device = shared
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        for noisy in ("fedistill", "opacus"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    return run_one(spec, _mnist(root, True), _mnist(root, False), eval_cfg, seed, device)


def run_parallel(specs, args, eval_cfg) -> list[dict[str, Any]]:
    """``run_one`` for every spec in ``args.jobs`` processes of one thread each, in order."""
    from fedistill.jobs import map_jobs

    # longest first, so the last job does not run alone: DP-PSG, then KIP, then references
    rank = {"psg": 0, "kip": 1}
    order = sorted(range(len(specs)), key=lambda i: rank.get(specs[i]["family"], 2))
    shared = (args.data_root, eval_cfg, args.seed, args.device)
    done = map_jobs(_job, [specs[i] for i in order], shared, jobs=args.jobs)
    by_index = dict(zip(order, done, strict=True))
    return [by_index[i] for i in range(len(specs))]


def step_cost(train, psg_overrides: dict[str, Any], repeats: int, seed: int) -> dict[str, Any]:
    """CPU seconds of one DP-PSG matching step, private against plain real gradient."""
    import copy

    import torch
    import torch.nn.functional as F
    from opacus import GradSampleModule

    from fedistill.distill import get_method
    from fedistill.distill.dc import match_loss, matched_parameters
    from fedistill.distill.psg import poisson_sample, private_gradient, resolve_depth
    from fedistill.models import build_model

    cfg = get_method("psg").make_config(**_accepted("psg", psg_overrides)[0])
    cfg = dataclasses.replace(cfg, depth=resolve_depth(cfg.depth, train.info.height))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = build_model("convnet", train.info, width=cfg.width, depth=cfg.depth, norm=cfg.norm)
    params = matched_parameters(net)
    shadow = copy.deepcopy(net)
    for p in shadow.parameters():
        p.requires_grad_(p.ndim > 1)
    shadow = GradSampleModule(shadow, loss_reduction="sum")
    xs = torch.randn(IPC * train.num_classes, *train.info.shape, requires_grad=True)
    ys = torch.arange(train.num_classes).repeat_interleave(IPC)
    opt = torch.optim.SGD([xs], lr=cfg.lr_img, momentum=cfg.momentum_img)
    q = cfg.batch_real / len(train)

    def step(private: bool) -> tuple[float, float]:
        c0 = time.process_time()
        idx = poisson_sample(len(train), q, gen)
        xr, yr = train.images[idx], train.labels[idx]
        if private:
            shadow._module.load_state_dict(net.state_dict())
            g_real = private_gradient(
                shadow, xr, yr, clip=cfg.clip, noise_multiplier=1.0,
                expected_batch=cfg.batch_real, generator=gen,
            )  # fmt: skip
        else:
            g_real = [g.detach() for g in torch.autograd.grad(F.cross_entropy(net(xr), yr), params)]
        c1 = time.process_time()
        g_syn = torch.autograd.grad(F.cross_entropy(net(xs), ys), params, create_graph=True)
        loss = match_loss(g_syn, g_real)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.process_time() - c0, c1 - c0

    step(True), step(False)  # warm-up
    t: dict[str, list[float]] = {"private": [], "plain": [], "private_grad": [], "plain_grad": []}
    for _ in range(repeats):  # interleaved, so load from other processes hits both alike
        for mode in ("private", "plain"):
            total, grad = step(mode == "private")
            t[mode].append(total)
            t[f"{mode}_grad"].append(grad)
    med = {k: statistics.median(v) for k, v in t.items()}
    return {
        "what": "one matching step (real gradient + synthetic gradient + distance + image "
        "update), CPU seconds of this process, median over repeats",
        "model": f"convnet width {cfg.width} depth {cfg.depth} norm {cfg.norm}",
        "expected_batch": cfg.batch_real,
        "repeats": repeats,
        "seconds_private_step": med["private"],
        "seconds_plain_step": med["plain"],
        "ratio_step": med["private"] / med["plain"],
        "seconds_private_real_gradient": med["private_grad"],
        "seconds_plain_real_gradient": med["plain_grad"],
        "ratio_real_gradient": med["private_grad"] / med["plain_grad"],
        "target_ratio_step": 3.0,
    }


def plot(records: list[dict[str, Any]], path: Path, title: str) -> Path:
    from fedistill.plots import pyplot

    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    done = [r for r in records if "accuracy_mean" in r]
    psg = [r for r in done if r["family"] == "psg"]
    finite = sorted((r for r in psg if r["epsilon"] is not None and math.isfinite(r["epsilon"])),
                    key=lambda r: r["epsilon"])  # fmt: skip
    xs = [r["epsilon"] for r in finite]
    inf_x = (max(xs) * 4) if xs else 100.0  # where "no noise" (ε = ∞) sits on the log axis
    nonpriv = [r for r in psg if r not in finite]
    px = xs + [inf_x] * len(nonpriv)
    pr = finite + nonpriv
    ax1.errorbar(px, [r["accuracy_mean"] for r in pr], yerr=[r["accuracy_std"] for r in pr],
                 marker="o", capsize=3, label="DP-PSG")  # fmt: skip
    for r, x in zip(pr, px):
        ax1.annotate(r["label"].replace("DP-PSG ", ""), (x, r["accuracy_mean"]),
                     textcoords="offset points", xytext=(4, -12), fontsize=8)  # fmt: skip
    ax1.set_xscale("log")
    ax1.set_xticks([*xs, inf_x], [*(f"{x:.3g}" for x in xs), "∞"])
    ax1.set_xlabel("ε (δ = 1e-5); ∞ = no noise")
    ax1.set_ylabel("test accuracy (ConvNet-128-3)")
    ax1.set_title("DP-PSG: accuracy against ε")
    kip_rows = [r for r in done if r["family"] == "kip"]
    fc = [r for r in kip_rows if r.get("overrides", {}).get("kernel") in ("ntk", "nngp")]
    kip = sorted((r for r in kip_rows if r not in fc), key=lambda r: r["rho"] or 0.0)
    for r in fc:  # the FC-kernel comparison rows: points beside the ρ curve, not on it
        kind = r["overrides"]["kernel"].upper()
        ax2.errorbar([r["rho"] or 0.0], [r["accuracy_mean"]], yerr=[r["accuracy_std"]],
                     marker="^", capsize=3, ls="none", color="tab:purple",
                     label=f"KIP, FC {kind} (ConvNet)")  # fmt: skip
    if kip:
        ax2.errorbar([r["rho"] or 0.0 for r in kip], [r["accuracy_mean"] for r in kip],
                     yerr=[r["accuracy_std"] for r in kip], marker="s", capsize=3,
                     color="tab:green", label="KIP-ρ (ConvNet)")  # fmt: skip
        if all("krr_accuracy" in r for r in kip):
            ax2.plot([r["rho"] or 0.0 for r in kip], [r["krr_accuracy"] for r in kip], "s--",
                     color="tab:olive", label="KIP-ρ (KRR)")  # fmt: skip
    else:
        ax2.text(0.5, 0.5, "KIP not run", ha="center", transform=ax2.transAxes)
    ax2.set_xlabel("ρ (fraction of every image kept as noise)")
    ax2.set_title("KIP-ρ: accuracy against ρ")
    for r, style in zip([r for r in done if r["family"] == "reference"], ("--", ":")):
        for ax in (ax1, ax2):
            ax.axhline(r["accuracy_mean"], ls=style, color="gray", label=r["label"])
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_payload(doc: dict[str, Any], path: Path) -> Path:
    """The privacy-utility plot of a benchmark payload written (or to be written) at ``path``."""
    suffix = "_quick" if doc["mode"] == "quick" else ""
    ev = doc["eval"]
    return plot(doc["runs"], path.with_name(f"privacy_utility{suffix}.png"),
                f"MNIST subset, IPC {doc['ipc']}, eval {ev['epochs']} epochs × "
                f"{ev['num_models']} models ({doc['mode']})")  # fmt: skip


def replot(path: Path) -> int:
    """Redraw the privacy-utility plot of an existing JSON (nothing is run)."""
    import json

    if not path.is_file():
        print(f"error: {path} not found", file=sys.stderr)
        return 2
    png = plot_payload(json.loads(path.read_text()), path)
    print(f"wrote {png} from {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run")
    p.add_argument("--data-root", default=str(DEFAULT_MNIST))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", nargs="*", choices=FAMILIES, help="run only these families")
    p.add_argument(
        "--keep-from",
        default=None,
        metavar="JSON",
        help="with --only: take the other families' rows from an earlier bench_privacy.json "
        "(same seed, budgets and evaluation) instead of running them again",
    )
    p.add_argument("--replot", action="store_true", help="only redraw the plot of the JSON (--out)")
    p.add_argument("--step-repeats", type=int, default=None)
    p.add_argument("--out", default=None, help="JSON path (default experiments/results/...)")
    p.add_argument(
        "--jobs", type=int, default=1, help="runs at once, each in its own process (1 thread)"
    )
    p.add_argument(
        "--models", type=int, default=None, help=f"evaluation models (default {EVAL['num_models']})"
    )
    p.add_argument(
        "--references-from",
        default=None,
        metavar="JSON",
        help="take the random and DM rows from bench_distill.json (IPC 10, same seed, DM "
        "budget and evaluation) instead of running them again",
    )
    args = p.parse_args(argv)
    if args.replot:
        return replot(Path(args.out) if args.out else RESULTS / "bench_privacy.json")
    if args.keep_from and not args.only:
        p.error("--keep-from needs --only (the families to run again)")
    if args.keep_from and not Path(args.keep_from).is_file():
        p.error(f"--keep-from: {args.keep_from} not found")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("fedistill", "opacus"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import torch

    from fedistill.data import load_dataset
    from fedistill.evaluate import EvalConfig

    torch.set_num_threads(args.threads)
    cmd = command_line()
    print(f"command: {cmd}", flush=True)
    root = require_mnist(args.data_root)
    train = load_dataset("mnist", root, train=True)
    test = load_dataset("mnist", root, train=False)
    eval_cfg = EvalConfig(**(QUICK_EVAL if args.quick else EVAL))
    if args.models:
        eval_cfg.num_models = args.models
    psg = QUICK_PSG if args.quick else PSG_BUDGET
    budgets = {
        "psg": psg,
        "kip": QUICK_KIP if args.quick else KIP_BUDGET,
        "kip_fc": KIP_FC,
        "dm": QUICK_DM if args.quick else DM_BUDGET,
    }
    old: list[dict[str, Any]] = []
    if args.keep_from:  # checked before anything runs
        try:
            old = kept_rows(Path(args.keep_from), set(args.only), args.seed, budgets, eval_cfg)
        except ValueError as err:
            p.error(str(err))
    specs = [s for s in runs(args.quick) if not args.only or s["family"] in args.only]
    if args.references_from:  # read when the runs are done: bench_distill may still be running
        specs = [s for s in specs if s["family"] != "reference"]
    t0 = time.perf_counter()
    if args.jobs > 1:
        records = run_parallel(specs, args, eval_cfg)
    else:
        records = [run_one(s, train, test, eval_cfg, args.seed, args.device) for s in specs]
    if args.references_from:
        dm = QUICK_DM if args.quick else DM_BUDGET
        path = Path(args.references_from)
        if path.is_file():
            reused = reference_rows(path, args.seed, dm, eval_cfg)
            if len(reused) < 2:
                logging.warning(
                    "%s: no random/DM row at IPC %d with this seed, DM budget and %d epochs; "
                    "reused only %s",
                    path, IPC, eval_cfg.epochs, sorted(reused) or "none",
                )  # fmt: skip
            records = [*reused.values(), *records]
        else:
            logging.warning("%s not found: the table has no random/DM reference rows", path)
    if args.keep_from:
        records = sorted([*old, *records], key=lambda r: FAMILIES.index(r["family"]))
        logging.info("kept %d rows from %s", len(old), args.keep_from)
    repeats = args.step_repeats or (2 if args.quick else 10)
    cost = step_cost(train, psg, repeats, args.seed)
    logging.info(
        "DP-PSG step cost: %.3fs private vs %.3fs plain = %.2f× (target < 3×)",
        cost["seconds_private_step"],
        cost["seconds_plain_step"],
        cost["ratio_step"],
    )
    suffix = "_quick" if args.quick else ""
    out = Path(args.out) if args.out else RESULTS / f"bench_privacy{suffix}.json"
    payload = {
        "command": cmd,
        "mode": "quick" if args.quick else "full",
        "dataset": f"mnist-subset ({len(train)} train / {len(test)} test)",
        "ipc": IPC,
        "delta": DELTA,
        "seed": args.seed,
        "budgets": budgets,
        "eval": dataclasses.asdict(eval_cfg),
        "runs": records,
        "step_cost": cost,
        "seconds_total": round(time.perf_counter() - t0, 1),
        "machine": machine(),
        "notes": [
            "epsilon is read back from Opacus's RDP accountant over the (σ, q, steps) that ran; "
            "Infinity = no noise; null = no (ε, δ) guarantee (random, DM, KIP-ρ)",
            "CPU runs with small budgets: expect lower accuracies than the papers' GPU runs",
            "timings are wall/CPU seconds on a shared machine: noisy",
        ],
    }
    write_json(out, payload)
    png = plot_payload(payload, out)
    print(f"wrote {out} and {png}")
    print(f"reproduce: {cmd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
