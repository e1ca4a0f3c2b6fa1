"""DOORPING against its controls: does the optimised trigger beat a random one and NAIVE's?

Liu et al. (NDSS 2023) report DOORPING near 100 % ASR where NAIVE stays lower. Issue 13 asks for
DOORPING ≥ 20 points above its random-trigger control and above NAIVE at the same poison rate,
on a DC or DM set at a small stated budget. This benchmark measures exactly that, with the
published trigger update (:mod:`attacks.doorping`: the top-k units of the penultimate layer by
Σ|W|, the trigger driving them to α × their first activation, an update inside every outer
loop of DC, before every DM iteration), at the reference's poison rate (p = 0.01 of all
training images) and trigger (2×2, unclamped):

    python experiments/bench_doorping.py                    # digits, IPC 10, DC and DM
    python experiments/bench_doorping.py --loops dc --clamp # the trigger kept a valid image

Every figure is a mean ± std over 3 final models trained on the set with the distillation's
own network (a ConvNet without normalisation, as the reference's ``ConvNet``, depth 2 on 8×8):
ASR on triggered non-target test images, the same models' target-class rate on clean images,
clean accuracy. The controls come from the same loop at the same p: the initial random patch
never optimised (``random_trigger``) and BadNets' white patch of the same geometry (``naive``);
``baseline`` is the clean pipeline's models with DOORPING's final trigger. The target is met
when, for the DC or the DM loop, DOORPING's ASR is ≥ 20 points above ``random_trigger`` and
above ``naive``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import RESULTS, command_line, machine, write_json

from attacks.backdoor import run_backdoor
from attacks.doorping import DoorpingConfig
from fedistill.data import load_dataset
from fedistill.evaluate import EvalConfig

KEYS = ("asr", "asr_std", "clean_target_rate", "clean_target_rate_std", "clean_accuracy")


def one_loop(loop: str, args, train, test) -> dict:
    net = {"width": args.width, "norm": "none"}
    cfg = DoorpingConfig(
        loop=loop,
        epochs=args.dc_iterations if loop == "dc" else 1,
        dm_iterations=args.dm_iterations,
        model_kwargs=net,
        clamp=args.clamp,
        trigger_steps=args.trigger_steps,
        alpha=args.alpha,
    )
    ecfg = EvalConfig(
        epochs=args.eval_epochs,
        num_models=args.models,
        lr=0.01,
        batch_size=256,
        dsa=False,
        model_kwargs={**net, "depth": 2},
    )
    t0 = time.perf_counter()
    out = run_backdoor(
        train,
        test,
        kind="doorping",
        ipc=args.ipc,
        p=args.p,
        target=0,
        eval_cfg=ecfg,
        doorping_config=cfg,
        controls=True,
    )
    rows = {k: {f: out[k][f] for f in KEYS} for k in ("attacked", "random_trigger", "naive")}
    rows["baseline"] = {f: out["baseline"][f] for f in KEYS}
    asr = rows["attacked"]["asr"]
    target = {
        "above_random_trigger_by_20_points": asr >= rows["random_trigger"]["asr"] + 0.20,
        "above_naive": asr > rows["naive"]["asr"],
    }
    return {
        "loop": loop,
        "doorping": asdict(cfg),
        "eval": asdict(ecfg),
        "poisoned": out["poisoned"],
        "trigger_updates": out["trigger_updates"],
        "trigger": out["trigger"],
        "initial_trigger": out["initial_trigger"],
        "trigger_change": out["trigger_change"],
        "results": rows,
        "target": target,
        "target_met": all(target.values()),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_doorping.json")
    ap.add_argument("--loops", default="dc,dm", help="comma-separated: dc, dm")
    ap.add_argument("--p", type=float, default=0.01, help="poisoned share of the training data")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--dc-iterations", type=int, default=10, help="DC outer iterations")
    ap.add_argument("--dm-iterations", type=int, default=200, help="DM iterations")
    ap.add_argument("--trigger-steps", type=int, default=1000, help="Adam steps per update (max)")
    ap.add_argument("--alpha", type=float, default=10.0)
    ap.add_argument("--width", type=int, default=32, help="ConvNet width (reference: 128)")
    ap.add_argument("--eval-epochs", type=int, default=300, help="reference DC: 300")
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--clamp", action="store_true", help="keep the trigger a valid image")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    loops = [s.strip() for s in args.loops.split(",") if s.strip()]
    if not loops or set(loops) - {"dc", "dm"}:
        print(f"error: --loops takes dc and/or dm, got '{args.loops}'", file=sys.stderr)
        return 2
    train, test = load_dataset("digits", train=True), load_dataset("digits", train=False)
    t0 = time.perf_counter()
    runs = {loop: one_loop(loop, args, train, test) for loop in loops}
    payload = {
        "benchmark": "DOORPING vs its random-trigger and NAIVE controls (issue 13's target)",
        "command": command_line(),
        "dataset": "digits (sklearn, 8×8)",
        "budget": {
            "ipc": args.ipc,
            "p": args.p,
            "target_class": 0,
            "clamp": args.clamp,
            "models": args.models,
            "threads": args.threads,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },
        "runs": runs,
        "target_met": any(r["target_met"] for r in runs.values()),
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": machine(),
    }
    write_json(args.out, payload)
    for loop, r in runs.items():
        for k, row in r["results"].items():
            print(f"{loop} {k:15s} ASR {100 * row['asr']:5.1f} ± {100 * row['asr_std']:4.1f} %")
        print(f"{loop}: target met {r['target_met']} ({r['target']})")
    print(f"target met (DC or DM): {payload['target_met']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
