"""Benchmark: DP audits against the ε they audit — does the audit catch a broken mechanism, and
does the correct one stay within its claim?

Settings (DP-PSG's mechanism as its defaults run it on the MNIST subset: N = 8,006, expected
batch 256, q = 0.032, 20 × 10 × 2 = 400 private steps, δ = 1e-5, σ from its RDP ledger):

* **white-box gradient canary** (Nasr et al. 2021/2023): ``--trials`` independent runs of the
  mechanism with a Dirac gradient canary of norm C in half of them; threshold on one half,
  Clopper–Pearson bound on the other; ``--seeds`` repetitions per setting;
* **one-run** (Steinke, Nasr & Jagielski 2023): ``--canaries`` gradient canaries in one run,
  each included with probability ½, k = canaries / 10 guesses each way;
* at claimed ε ∈ {0.5, 1, 2, 4, 8}, without noise (σ = 0, ε = ∞) and a broken mechanism (noise
  × 0.1 while claiming ε = 2);
* **black-box** (the attack matrix's audit, ``attacks.dp_audit.run_dp_audit``): 16 whole
  pipelines on digits with 8 mislabelled canaries each — a non-private overfit MLP ("real")
  and DP-PSG at ε = 1 — to show its ceiling (``--no-black-box`` skips them).

Each row: ε claimed, the accountant's ε (of the noise actually added), ε_lb, its ceiling (the
largest bound the trial count can show), trials, seconds, verdict (violation: ε_lb > claim;
inconclusive: ceiling < claim; else consistent).

Writes experiments/results/bench_dp_audit.json and experiments/results/dp_audit.png.

    python experiments/bench_dp_audit.py               # a couple of CPU-minutes
    python experiments/bench_dp_audit.py --quick       # seconds
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from _bench import RESULTS, command_line, machine, write_json

N_MNIST_SUBSET = 8006
CLAIMS = (0.5, 1.0, 2.0, 4.0, 8.0)


def settings() -> list[dict[str, Any]]:
    rows = [{"label": f"DP-PSG ε = {e:g}", "epsilon": e, "noise_scale": 1.0} for e in CLAIMS]
    rows.append({"label": "no noise (σ = 0)", "epsilon": math.inf, "noise_scale": 1.0})
    rows.append({"label": "broken: noise × 0.1, claims ε = 2", "epsilon": 2.0, "noise_scale": 0.1})
    return rows


def mechanism_rows(trials: int, canaries: int, seeds: int) -> list[dict[str, Any]]:
    from attacks.dp_audit_power import (
        CanaryMechanism,
        gradient_canary_audit,
        one_run_gradient_audit,
    )
    from fedistill.distill.psg import PSGConfig

    out = []
    for s in settings():
        kw = {"noise_multiplier": 0.0} if math.isinf(s["epsilon"]) else {}
        cfg = PSGConfig(epsilon=s["epsilon"], **kw)
        mech = CanaryMechanism.from_psg(cfg, N_MNIST_SUBSET, noise_scale=s["noise_scale"])
        t0 = time.perf_counter()
        runs = [gradient_canary_audit(mech, trials, seed=seed) for seed in range(seeds)]
        secs = time.perf_counter() - t0
        worst = max(runs, key=lambda a: a.epsilon_lb)
        out.append(
            _row(s, "white-box gradient canary", worst.to_dict(), secs)
            | {
                "epsilon_lb_runs": [round(a.epsilon_lb, 4) for a in runs],
                "verdict_runs": [a.verdict for a in runs],
                "mechanism": worst.details["mechanism"],
            }
        )
        t0 = time.perf_counter()
        one = one_run_gradient_audit(mech, canaries, seed=0)
        out.append(
            _row(s, "one-run gradient canaries", one.to_dict(), time.perf_counter() - t0)
            | {"guesses": one.details["guesses"], "correct": one.details["correct"]}
        )
        logging.info(
            "%-36s white-box ε_lb %.3f (ceiling %.3f)  one-run ε_lb %.3f (ceiling %.3f)",
            s["label"],
            worst.epsilon_lb,
            worst.ceiling,
            one.epsilon_lb,
            one.ceiling,
        )
    return out


def _row(s: dict[str, Any], audit: str, d: dict[str, Any], seconds: float) -> dict[str, Any]:
    return {
        "label": s["label"],
        "audit": audit,
        "noise_scale": s["noise_scale"],
        "claimed_epsilon": d["claimed_epsilon"],  # null: ε = ∞ (no noise)
        "accountant_epsilon": d["accountant_epsilon"],
        "epsilon_lb": round(d["epsilon_lb"], 4),
        "ceiling": round(d["ceiling"], 4),
        "trials": d["trials"],
        "seconds": round(seconds, 2),
        "verdict": d["verdict"],
    }


def black_box_rows(seed: int) -> list[dict[str, Any]]:
    from attacks.dp_audit import run_dp_audit
    from attacks.targets import PipelineConfig
    from fedistill.data import load_dataset

    train = load_dataset("digits", train=True)
    mlp = {"model": "mlp", "epochs": 150, "lr": 0.05, "weight_decay": 0.0, "dsa": False}
    psg = {"epsilon": 1.0, "iterations": 2, "outer_loop": 5, "batch_loop": 1, "inner_loop": 2}
    psg |= {"batch_real": 32, "width": 32, "depth": 2}
    cases = [
        ("real (no DP), overfit MLP", PipelineConfig(**mlp, batch_size=64)),
        ("DP-PSG ε = 1 → MLP", PipelineConfig(method="psg", ipc=2, method_options=psg, **mlp)),
    ]
    out = []
    for label, cfg in cases:
        t0 = time.perf_counter()
        d = run_dp_audit(train, cfg, num_runs=16, base_size=100, canaries_per_run=8, seed=seed)
        s = {"label": label, "noise_scale": 1.0}
        out.append(_row(s, "black-box canaries (16 runs × 8)", d, time.perf_counter() - t0))
        logging.info("%-36s black-box ε_lb %.3f (ceiling %.3f)", label, d["epsilon_lb"],
                     d["ceiling"])  # fmt: skip
    return out


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    from fedistill.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 5))
    finite = [r["claimed_epsilon"] for r in rows if r["claimed_epsilon"] is not None]
    inf_x = max(finite) * 2.5 if finite else 20.0  # where ε = ∞ sits on the log axis
    styles = {
        "white-box gradient canary": ("o", "tab:blue", 0.94),
        "one-run gradient canaries": ("s", "tab:green", 1.06),
        "black-box canaries (16 runs × 8)": ("^", "tab:orange", 1.0),
    }
    for audit, (marker, color, shift) in styles.items():
        sel = [r for r in rows if r["audit"] == audit]
        if not sel:
            continue
        xs = [(r["claimed_epsilon"] or inf_x) * shift for r in sel]
        ax.scatter(xs, [r["epsilon_lb"] for r in sel], marker=marker, color=color, zorder=3,
                   label=f"{audit}: ε_lb")  # fmt: skip
        ax.scatter(xs, [r["ceiling"] for r in sel], marker="_", s=300, color=color, zorder=2,
                   label=f"{audit}: ceiling")  # fmt: skip
        for x, r in zip(xs, sel):
            ax.plot([x, x], [r["epsilon_lb"], r["ceiling"]], color=color, alpha=0.3, lw=1)
            if r["verdict"] == "violation":
                ax.annotate("violation", (x, r["epsilon_lb"]), xytext=(6, -4),
                            textcoords="offset points", fontsize=7, color="tab:red")  # fmt: skip
    lim = inf_x * 1.3
    diag = [0.35 * (lim / 0.35) ** (i / 200) for i in range(201)]  # straight on a log axis
    ax.plot(diag, diag, "k--", lw=1, label="ε_lb = ε claimed (above: violation)")
    ax.set_xscale("log")
    ticks = sorted(set(finite))
    ax.set_xticks([*ticks, inf_x], [*(f"{t:g}" for t in ticks), "∞ (σ=0)"])
    ax.set_ylim(0, 8.5)
    ax.set_xlim(0.35, lim)
    ax.set_xlabel("ε claimed (δ = 1e-5)")
    ax.set_ylabel("ε lower bound (95 % Clopper–Pearson / one-run bound)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_payload(doc: dict[str, Any], path: Path) -> Path:
    suffix = "_quick" if doc["mode"] == "quick" else ""
    title = (
        f"DP audits of DP-PSG's mechanism (q = 0.032, 400 steps, δ = 1e-5): white-box "
        f"{doc['trials']:,} runs × {doc['seeds']} seeds (largest ε_lb shown),\n"
        f"one-run {doc['canaries']:,} canaries; black-box: 16 pipelines × 8 canaries on digits"
    )
    return plot(doc["rows"], path.with_name(f"dp_audit{suffix}.png"), title)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few trials: a smoke run")
    p.add_argument("--trials", type=int, default=None, help="runs per white-box audit (20,000)")
    p.add_argument("--canaries", type=int, default=None, help="one-run canaries (10,000)")
    p.add_argument("--seeds", type=int, default=None, help="white-box repetitions (5)")
    p.add_argument("--no-black-box", action="store_true", help="skip the pipeline audits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="JSON path (default experiments/results/...)")
    p.add_argument("--replot", action="store_true", help="only redraw the plot of the JSON")
    args = p.parse_args(argv)
    if args.replot:
        import json

        path = Path(args.out) if args.out else RESULTS / "bench_dp_audit.json"
        print(f"wrote {plot_payload(json.loads(path.read_text()), path)} from {path}")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("fedistill", "opacus", "attacks"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import torch

    torch.set_num_threads(args.threads)
    cmd = command_line()
    print(f"command: {cmd}", flush=True)
    trials = args.trials or (2_000 if args.quick else 20_000)
    canaries = args.canaries or (1_000 if args.quick else 10_000)
    seeds = args.seeds or (1 if args.quick else 5)
    t0 = time.perf_counter()
    rows = mechanism_rows(trials, canaries, seeds)
    if not (args.no_black_box or args.quick):
        rows += black_box_rows(args.seed)
    suffix = "_quick" if args.quick else ""
    out = Path(args.out) if args.out else RESULTS / f"bench_dp_audit{suffix}.json"
    payload = {
        "command": cmd,
        "mode": "quick" if args.quick else "full",
        "mechanism": (
            f"DP-PSG defaults on N = {N_MNIST_SUBSET} (MNIST subset): q = 256 / N, 400 steps, "
            "δ = 1e-5, σ calibrated by its RDP ledger"
        ),
        "trials": trials,
        "canaries": canaries,
        "seeds": seeds,
        "confidence": 0.95,
        "rows": rows,
        "seconds_total": round(time.perf_counter() - t0, 1),
        "machine": machine(),
        "notes": [
            "white-box rows: the largest ε_lb over the seeds (epsilon_lb_runs lists each); the "
            "threshold is chosen on half the trials and the bound counted on the other half",
            "ceiling: the bound a perfect attack would give with these trials",
            "claimed_epsilon null: ε = ∞ (no noise); accountant_epsilon: the RDP ε of the noise "
            "actually added (for the broken mechanism, σ × 0.1)",
            "verdict: violation if ε_lb > claim, inconclusive if ceiling < claim, else consistent",
        ],
    }
    write_json(out, payload)
    png = plot_payload(payload, out)
    print(f"wrote {out} and {png}")
    print(f"reproduce: {cmd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
