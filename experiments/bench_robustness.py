"""Benchmark: the FedDM set filter against adaptive attackers — detection, false rejection and
damage as curves over attacker strength (issue 13).

Setting: digits (1,257 train / 540 test), one-shot FedDM with ``random`` sets (IPC 10: what a
client uploads costs nothing to make, so the budget goes to federations, not distillation),
the global model an MLP (60 epochs, no augmentation). One malicious client (client 0) in
``n ∈ {5, 10}`` clients, Dirichlet ``α ∈ {0.1, 0.5}``, seeds ``0..S−1``: ``4·S`` federations per
attacker and strength (12 with the default ``--seeds 3``). The defence is
:func:`fedistill.robust.filter_sets` with its default configuration (pairwise cross-scoring,
per-class agreement, feature statistics).

Attackers and strengths (:mod:`attacks.poisoning`): ``rotate`` (k of 10 classes' labels
rotated), ``hidden_pull`` (h pull images hidden among the honest target-class images),
``scale`` (images × s), ``backdoor`` (NAIVE, p of the client's real data stamped and
relabelled), and the filter-aware ``aware_*`` versions that search the strongest setting the
filter still keeps (omniscient: they know the honest sets).

Per (attack, strength) the JSON holds, over the federations: ``detection_rate`` (malicious
client rejected), ``false_rejection_rate`` (honest clients rejected), ``damage`` — the defended
global model's accuracy drop from the clean federation (what an attacker achieves through
the filter; ≈ 0 when detected) — and for ``hidden_pull`` the source→target rate, for
``backdoor`` the ASR; plus the filter's FRR on clean federations (no attacker).

Outputs: ``experiments/results/bench_robustness.json`` and ``robustness.png`` (detection, FRR
and damage vs strength, one line per attacker). Run:

    python experiments/bench_robustness.py            # 3 seeds: 12 federations per point
    python experiments/bench_robustness.py --quick    # 1 seed, α = 0.5, n = 5: a smoke run
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from attacks.poisoning import run_poisoning  # noqa: E402
from experiments._bench import command_line, machine, write_json  # noqa: E402
from fedistill.data import load_dataset  # noqa: E402
from fedistill.evaluate import EvalConfig, accuracy  # noqa: E402
from fedistill.federated import simulate_feddm, train_global  # noqa: E402
from fedistill.plots import pyplot  # noqa: E402
from fedistill.robust import (  # noqa: E402
    FilterConfig,
    false_rejection_rate,
    filter_sets,
    sanitise_sets,
)

log = logging.getLogger("bench_robustness")
OUT = REPO / "experiments" / "results"

# attack → (strength parameter of run_poisoning, strengths); None: the attacker picks its own
ATTACKS: dict[str, tuple[str | None, list[float]]] = {
    "rotate": ("k_rotate", [2, 4, 6, 10]),
    "hidden_pull": ("hide", [2, 4, 6, 10]),
    "scale": ("scale", [1.25, 1.5, 2.0, 3.0, 10.0]),
    "backdoor": ("p_backdoor", [0.1, 0.3, 0.6]),
    "aware_rotate": (None, [0]),
    "aware_scale": (None, [0]),
    "aware_hidden_pull": (None, [0]),
}


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and v == v]
    return statistics.fmean(vals) if vals else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    train = load_dataset("digits", train=True)
    test = load_dataset("digits", train=False)
    cfg = EvalConfig(epochs=60, num_models=1, lr=0.05, batch_size=64, dsa=False, model="mlp")
    fcfg = FilterConfig(class_min_gap=args.class_min_gap, per_class=not args.no_per_class)
    settings = [
        (alpha, n, seed)
        for alpha in args.alphas
        for n in args.clients
        for seed in range(args.seeds)
    ]
    attacks = {k: v for k, v in ATTACKS.items() if k in args.attacks}
    rows: list[dict[str, Any]] = []
    clean_rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for alpha, n, seed in settings:
        common = dict(
            method="random",
            ipc=10,
            partitioner="dirichlet",
            alpha=alpha,
            eval_cfg=cfg,
            seed=seed,
        )
        clean = simulate_feddm(train, test, num_clients=n, **common)
        kept, rejected = filter_sets(dict(clean.sets), train.info, seed=seed, config=fcfg)
        row: dict[str, Any] = {
            "alpha": alpha,
            "n": n,
            "seed": seed,
            "accuracy": clean.accuracy,
            "false_rejection_rate": false_rejection_rate(rejected, list(range(n))),
            "rejected": {str(k): v for k, v in rejected.items()},
        }
        if args.sanitise:  # the sanitiser's cost when nobody attacks
            cleaned, dropped = sanitise_sets(
                {k: clean.sets[k] for k in kept}, train.info, seed=seed, config=fcfg
            )
            model = train_global(list(cleaned.values()), train.info, cfg, seed=seed)
            row["sanitised_accuracy"] = accuracy(model, test)
            row["sanitised_dropped"] = sum(dropped.values())
            row["images"] = sum(len(clean.sets[k]) for k in kept)
        clean_rows.append(row)
        for attack, (param, strengths) in attacks.items():
            for strength in strengths:
                extra = {param: strength} if param else {}
                out = run_poisoning(
                    train,
                    test,
                    attack=attack,
                    m=1,
                    n=n,
                    defended=True,
                    clean_accuracy=clean.accuracy,
                    clean_result=clean,
                    filter_config=fcfg,
                    sanitise=args.sanitise,
                    **common,
                    **extra,
                )
                rows.append(
                    {
                        "attack": attack,
                        "level": strength if param else out["strength"],
                        "alpha": alpha,
                        "n": n,
                        "seed": seed,
                        "detected": out["detection_rate"],
                        "false_rejection_rate": out["false_rejection_rate"],
                        "damage": out["accuracy_drop"],
                        "source_to_target": out.get("source_to_target"),
                        "asr": out.get("asr"),
                        "clean_target_rate": out.get("clean_target_rate"),
                        "reason": out["rejected"].get("0"),
                    }
                )
                if "sanitised" in out:
                    san = out["sanitised"]
                    rows[-1]["sanitised"] = {
                        k: san.get(k)
                        for k in (
                            "accuracy_drop",
                            "asr",
                            "source_to_target",
                            "dropped_malicious",
                            "dropped_honest",
                        )
                    }
                log.info(
                    "α=%g n=%d seed=%d %s %s: detected %s, damage %.3f",
                    alpha,
                    n,
                    seed,
                    attack,
                    rows[-1]["level"],
                    out["detection_rate"],
                    out["accuracy_drop"],
                )
    curves: dict[str, list[dict[str, Any]]] = {}
    for attack, (param, strengths) in attacks.items():
        for strength in strengths:
            sel = [
                r for r in rows if r["attack"] == attack and (not param or r["level"] == strength)
            ]
            if not param:
                sel = [r for r in rows if r["attack"] == attack]
            curves.setdefault(attack, []).append(
                {
                    "strength": strength if param else "chosen by the attacker",
                    "levels_chosen": [r["level"] for r in sel] if not param else None,
                    "federations": len(sel),
                    "detection_rate": _mean([r["detected"] for r in sel]),
                    "false_rejection_rate": _mean([r["false_rejection_rate"] for r in sel]),
                    "damage": _mean([r["damage"] for r in sel]),
                    "damage_undetected": _mean([r["damage"] for r in sel if not r["detected"]]),
                    "source_to_target": _mean([r["source_to_target"] for r in sel]),
                    "asr": _mean([r["asr"] for r in sel]),
                    "sanitised": (
                        {
                            key: _mean([r["sanitised"][key] for r in sel])
                            for key in (
                                "accuracy_drop",
                                "asr",
                                "source_to_target",
                                "dropped_malicious",
                                "dropped_honest",
                            )
                        }
                        if sel and "sanitised" in sel[0]
                        else None
                    ),
                }
            )
    return {
        "command": command_line(),
        "machine": machine(),
        "budget": {
            "dataset": "digits",
            "method": "random",
            "ipc": 10,
            "global_model": "mlp, 60 epochs, lr 0.05, batch 64, no DSA",
            "alphas": args.alphas,
            "clients": args.clients,
            "seeds": args.seeds,
            "malicious": 1,
            "federations_per_point": len(settings),
            "filter": asdict(fcfg),
        },
        "clean": {
            "federations": len(clean_rows),
            "false_rejection_rate": _mean([r["false_rejection_rate"] for r in clean_rows]),
            "accuracy": _mean([r["accuracy"] for r in clean_rows]),
            "sanitised_accuracy": _mean([r.get("sanitised_accuracy") for r in clean_rows]),
            "sanitised_dropped_fraction": _mean(
                [r["sanitised_dropped"] / r["images"] for r in clean_rows if "images" in r]
            ),
            "honest_rejected": sum(len(r["rejected"]) for r in clean_rows),
            "honest_total": sum(r["n"] for r in clean_rows),
            "rows": clean_rows,
        },
        "curves": curves,
        "rows": rows,
        "seconds": time.perf_counter() - t0,
    }


PANELS = (
    ("detection_rate", "detection rate (malicious client rejected)"),
    ("false_rejection_rate", "false-rejection rate (honest clients)"),
    ("damage", "accuracy drop through the filter"),
    ("harm", "ASR (backdoor) · source→target (hidden_pull)"),
    ("harm_sanitised", "the same after sanitise_sets (per-image votes)"),
)


def _value(point: dict[str, Any], key: str) -> float:
    if key == "harm_sanitised":
        san = point.get("sanitised") or {}
        v = san.get("asr") if san.get("asr") is not None else san.get("source_to_target")
    elif key == "harm":
        v = point["asr"] if point["asr"] is not None else point["source_to_target"]
    else:
        v = point[key]
    return float("nan") if v is None else float(v)


def plot(result: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, (attack, pts) in enumerate(result["curves"].items()):
        colour = colours[n % len(colours)]
        xs = [p["strength"] for p in pts]
        for ax, (key, _title) in zip(axes, PANELS, strict=True):
            if attack.startswith("aware_"):  # the attacker's own choice: one level, dashed
                v = _value(pts[0], key)
                if v == v:
                    ax.axhline(v, ls="--", lw=1.2, color=colour, label=f"{attack} (own choice)")
                continue
            # strength on a common axis: the rank of the setting (weakest to strongest)
            ys = [_value(p, key) for p in pts]
            label = f"{attack} ({', '.join(f'{x:g}' for x in xs)})"
            ax.plot(range(1, len(xs) + 1), ys, marker="o", color=colour, label=label)
    for ax, (_key, title) in zip(axes, PANELS, strict=True):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("attacker strength (setting rank, weakest → strongest)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    b = result["budget"]
    fig.suptitle(
        f"FedDM set filter vs adaptive attackers · digits, random sets IPC 10, α {b['alphas']}, "
        f"n {b['clients']}, {b['federations_per_point']} federations per point; honest FRR "
        f"on clean federations {result['clean']['honest_rejected']}/{result['clean']['honest_total']}"
        + _sanitiser_cost(result["clean"]),
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _sanitiser_cost(clean: dict[str, Any]) -> str:
    if clean.get("sanitised_accuracy") is None:
        return ""
    return (
        f"; sanitiser on clean federations: accuracy {clean['accuracy']:.3f} → "
        f"{clean['sanitised_accuracy']:.3f}, {100 * clean['sanitised_dropped_fraction']:.0f} % "
        "of images dropped"
    )


def replot(json_path: Path, png_path: Path) -> Path:
    """Redraw the plot from a results file (no federations run)."""
    import json

    return plot(json.loads(json_path.read_text()), png_path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.5])
    p.add_argument("--clients", type=int, nargs="+", default=[5, 10])
    p.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=list(ATTACKS))
    p.add_argument("--out", type=Path, default=OUT / "bench_robustness.json")
    p.add_argument("--plot", type=Path, default=OUT / "robustness.png")
    p.add_argument("--quick", action="store_true", help="1 seed, α 0.5, 5 clients")
    p.add_argument("--class-min-gap", type=float, default=FilterConfig.class_min_gap)
    p.add_argument("--no-per-class", action="store_true", help="the filter before issue 13")
    p.add_argument("--replot", action="store_true", help="only redraw --plot from --out")
    p.add_argument(
        "--sanitise", action="store_true", help="also train on sanitise_sets' output per run"
    )
    args = p.parse_args(argv)
    if args.replot:
        replot(args.out, args.plot)
        return
    if args.quick:
        args.seeds, args.alphas, args.clients = 1, [0.5], [5]
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    torch.set_num_threads(1)
    result = run(args)
    write_json(args.out, result)
    plot(result, args.plot)
    log.info("wrote %s and %s in %.0f s", args.out, args.plot, result["seconds"])


if __name__ == "__main__":
    main()
