"""DOORPING against its controls: does the optimised trigger beat a random one and NAIVE's?

Liu et al. (NDSS 2023) report DOORPING near 100 % ASR where NAIVE stays lower. Issue 13 asks for
DOORPING ≥ 20 points above its random-trigger control and above NAIVE at the same poison rate,
at a small stated budget. This benchmark measures exactly that, with the published trigger
update (neurons of the penultimate layer by Σ|W|, the trigger driving them to α × their
initial activation, an update after every outer loop of DM):

    python experiments/bench_doorping.py            # digits, IPC 10, p 0.05: minutes on 2 cores

Every figure is a mean ± std over 3 final models (ConvNet-32, 100 epochs) trained on the set:
ASR on triggered non-target test images, the same models' target-class rate on clean images,
clean accuracy. The controls come from the same DM loop at the same p: the initial random
patch never optimised (``random_trigger``) and BadNets' white patch (``naive``); ``baseline``
is the clean pipeline's models with DOORPING's final trigger.
"""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_doorping.json")
    ap.add_argument("--p", type=float, default=0.05, help="poisoned share of the training data")
    ap.add_argument("--epochs", type=int, default=5, help="DOORPING outer epochs")
    ap.add_argument("--dm-iterations", type=int, default=20, help="DM iterations per epoch")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    train, test = load_dataset("digits", train=True), load_dataset("digits", train=False)
    cfg = DoorpingConfig(
        epochs=args.epochs,
        dm_iterations=args.dm_iterations,
        patch_size=3,
        model_kwargs={"width": 32},
        proxy_kwargs={"width": 32, "norm": "none"},
        trigger_input="stamped",
        topk=5,
    )
    ecfg = EvalConfig(
        epochs=100, num_models=3, lr=0.05, batch_size=256, dsa=False, model_kwargs={"width": 32}
    )
    t0 = time.perf_counter()
    out = run_backdoor(
        train,
        test,
        kind="doorping",
        ipc=10,
        p=args.p,
        target=0,
        eval_cfg=ecfg,
        doorping_config=cfg,
        controls=True,
    )
    seconds = time.perf_counter() - t0
    keys = ("asr", "asr_std", "clean_target_rate", "clean_target_rate_std", "clean_accuracy")
    rows = {k: {f: out[k][f] for f in keys} for k in ("attacked", "random_trigger", "naive")}
    rows["baseline"] = {f: out["baseline"][f] for f in keys} if out.get("baseline") else None
    asr = rows["attacked"]["asr"]
    target = {
        "above_random_trigger_by_20_points": asr >= rows["random_trigger"]["asr"] + 0.20,
        "above_naive": asr > rows["naive"]["asr"],
    }
    payload = {
        "benchmark": "DOORPING vs its random-trigger and NAIVE controls (issue 13's target)",
        "command": command_line(),
        "dataset": "digits (sklearn, 8×8)",
        "budget": {
            "ipc": 10,
            "p": args.p,
            "target_class": 0,
            "doorping": asdict(cfg),
            "trigger_updates": out.get("trigger_updates"),
            "eval": asdict(ecfg),
        },
        "results": rows,
        "trigger_change": out.get("trigger_change"),
        "target": target,
        "target_met": all(target.values()),
        "seconds": round(seconds, 1),
        "machine": machine(),
    }
    write_json(args.out, payload)
    for k, r in rows.items():
        if r:
            print(f"{k:15s} ASR {100 * r['asr']:5.1f} ± {100 * r['asr_std']:4.1f} %")
    print(f"target met: {payload['target_met']} ({target}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
