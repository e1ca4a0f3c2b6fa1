"""Benchmark: random, the coresets (herding, k-center), DM, DC, DSA and the factorised sets
(IDC on DM and on DC, HaBa) at IPC 1 and 10 on the real MNIST subset, on the CPU. IPC counts
stored images per class, as the papers do (IDC at factor 2 trains on 4×, HaBa on H× as many).

Each (method, ipc) runs in its own subprocess so its peak RSS is its own. For each: distill with
the stated iterations, time it (seconds per iteration), then train the standard ConvNet-128-3
(instance norm, SGD 0.01, momentum 0.9, wd 5e-4, DSA) for the stated epochs on the set, several
models, and test on the subset's 997 test images. Writes experiments/results/bench_distill.json.

    python experiments/bench_distill.py                      # the README's table
    python experiments/bench_distill.py --quick              # a one-minute smoke run
    # a reduced run (same budget for every iterative method, fewer epochs and models):
    python experiments/bench_distill.py --methods random,herding,dm,idc-dm \
        --max-iterations 100 --batch-real 64 --epochs 100 --models 2

``dm-official`` (with ``--official DIR``, a checkout of VICO-UoE/DatasetCondensation): the
official ``main_DM.py`` distills the set (at the same iterations, real images per class and DSA
strategy as ours; its own unseeded RNG), and the same evaluation as every other row trains on
it — so the official code's set and ours are compared under one protocol, on one machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _bench import (
    DEFAULT_MNIST,
    OFFICIAL_DM_PATCH_TEXT,
    RESULTS,
    children_peak_rss_mib,
    command_line,
    machine,
    official_dm_command,
    official_dm_copy,
    official_dm_problem,
    peak_rss_mib,
    require_mnist,
    write_json,
)

# CPU budget per (method, ipc): iterations of the method's own loop. Stated in the JSON/README.
# DM's iteration is one fresh network (≈ 2 CPU-s at 256 real images per class); DC/DSA's is one
# fresh network with get_loops' outer/inner schedule (IPC 1: 1 × 1; IPC 10: 10 matching rounds ×
# 50 network steps ≈ 190 CPU-s), so DC/DSA at IPC 10 run only a handful here (papers: 1,000).
BUDGET = {
    ("random", 1): 0,
    ("random", 10): 0,
    ("random", 50): 0,
    ("dm", 1): 200,
    ("dm", 10): 200,
    ("dm", 50): 200,  # issue 17: DM after 200 iterations at IPC 1 / 10 / 50
    ("dm-official", 1): 200,  # the official main_DM.py at DM's budget
    ("dm-official", 10): 200,
    ("dm-official", 50): 200,
    ("dc", 1): 100,
    ("dc", 10): 4,
    ("dsa", 1): 100,
    ("dsa", 10): 4,
    ("herding", 1): 0,
    ("herding", 10): 0,
    ("kcenter", 1): 0,
    ("kcenter", 10): 0,
    ("idc-dm", 1): 200,  # DM's budget: one fresh network and one image step each
    ("idc-dm", 10): 200,
    # IDC's gradient matching: per network 10 rounds × (one matching step per class + one pass
    # over 500 real images): ≈ 120 s per network at IPC 1 on a busy 2-core box (load 13), more
    # at IPC 10 (40 decoded images per class)
    ("idc-dc", 1): 10,
    ("idc-dc", 10): 4,
    ("haba", 1): 200,  # DM's budget (HaBa's matching here is DM's)
    ("haba", 10): 200,
}
# bench rows that are one registered method with options (the registry has one "idc")
VARIANTS: dict[str, tuple[str, dict]] = {
    "idc-dm": ("idc", {"base": "dm"}),
    "idc-dc": ("idc", {"base": "dc"}),
}
SELECTIONS = ("random", "herding", "kcenter")  # no iterations
TAKES_BATCH_REAL = ("dm", "dm-official", "dc", "dsa", "idc-dm", "idc-dc", "haba")
QUICK = {k: min(v, 3) for k, v in BUDGET.items()}


def official_dm_set(args: argparse.Namespace, batch_real: int):
    """The official ``main_DM.py``'s set after ``args.iterations`` image updates, as
    (images, labels). It runs ``--Iteration N`` + 1 updates (0 … N), so it is given N − 1. Its
    file holds tensors only and is read with ``weights_only=True``."""
    import torch

    from fedistill.augment import default_strategy
    from fedistill.data import MNIST_INFO

    with tempfile.TemporaryDirectory() as tmp:
        code = official_dm_copy(args.official, Path(tmp))
        cmd, env = official_dm_command(
            ipc=args.ipc,
            iteration=args.iterations - 1,
            batch_real=batch_real,
            dsa_strategy=default_strategy(MNIST_INFO),  # ours for MNIST: no flips
            data_root=args.data_root,
            save_path=tmp,
            threads=args.threads,
        )
        proc = subprocess.run(cmd, env=env, cwd=code, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise SystemExit(f"error: the official main_DM.py failed: {tail}")
        saved = torch.load(Path(tmp) / f"res_DM_MNIST_ConvNet_{args.ipc}ipc.pt", weights_only=True)
    images, labels = saved["data"][0]
    expected = (10 * args.ipc, 1, 28, 28)
    if tuple(images.shape) != expected or tuple(labels.shape) != (10 * args.ipc,):
        raise SystemExit(f"error: the official set has shape {tuple(images.shape)}, not {expected}")
    return images.float(), labels.long()


def _print_row(args: argparse.Namespace, seconds: float, res, **fields) -> None:
    """One (method, ipc) result as the ``RESULT`` line the parent reads: what every row has, and
    the method's own ``fields``."""
    row = {
        "method": args.method,
        "ipc": args.ipc,
        "iterations": args.iterations,
        **fields,
        "distill_seconds": seconds,
        "seconds_per_iteration": seconds / args.iterations if args.iterations else None,
        "accuracy_mean": res.mean,
        "accuracy_std": res.std,
        "accuracies": res.accuracies,
        "eval_epochs": args.epochs,
        "eval_models": args.models,
    }
    print("RESULT " + json.dumps(row), flush=True)


def worker(args: argparse.Namespace) -> None:
    import torch

    from fedistill.data import load_dataset
    from fedistill.distill import distill
    from fedistill.evaluate import EvalConfig, evaluate_arrays, evaluate_set

    torch.set_num_threads(args.threads)
    train = load_dataset("mnist", args.data_root, train=True)
    test = load_dataset("mnist", args.data_root, train=False)
    cfg = EvalConfig(epochs=args.epochs, num_models=args.models)
    if args.method == "dm-official":
        batch_real = args.batch_real or 256
        t0 = time.perf_counter()
        images, labels = official_dm_set(args, batch_real)
        seconds = time.perf_counter() - t0
        res = evaluate_arrays(images, labels, train.info, test, cfg, seed=args.seed)
        _print_row(
            args,
            seconds,  # the whole official process, start-up included
            res,
            batch_real=batch_real,
            stored_images=len(images),
            # the larger of this process's and the official process's
            peak_rss_mib=max(peak_rss_mib(), children_peak_rss_mib()),
            official=str(args.official),
            official_patch=OFFICIAL_DM_PATCH_TEXT,
        )
        return
    method, overrides = VARIANTS.get(args.method, (args.method, {}))
    overrides = dict(overrides)
    if args.method not in SELECTIONS:
        overrides["iterations"] = args.iterations
    if args.batch_real is not None and args.method in TAKES_BATCH_REAL:
        overrides["batch_real"] = args.batch_real
    t0 = time.perf_counter()
    syn = distill(method, train, args.ipc, seed=args.seed, **overrides)
    seconds = time.perf_counter() - t0
    res = evaluate_set(syn, test, cfg, seed=args.seed)
    _print_row(
        args,
        seconds,
        res,
        batch_real=overrides.get("batch_real"),
        stored_images=len(syn),
        stored_bytes=syn.nbytes(),
        decoder=syn.meta.get("decoder"),
        peak_rss_mib=peak_rss_mib(),
        hyperparameters=syn.meta.get("hyperparameters"),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", default=str(DEFAULT_MNIST))
    p.add_argument("--methods", default="random,herding,kcenter,dm,dc,dsa,idc-dm,idc-dc,haba")
    p.add_argument(
        "--max-iterations", type=int, help="cap every method's iterations (a reduced run)"
    )
    p.add_argument("--batch-real", type=int, help="real images per class per step (dm/dc/…)")
    p.add_argument("--ipcs", default="1,10")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--models", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads per run")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (each in its own process)")
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--official",
        type=Path,
        help="a checkout of VICO-UoE/DatasetCondensation: the dm-official rows run its main_DM.py",
    )
    p.add_argument("--out", default=str(RESULTS / "bench_distill.json"))
    p.add_argument("--worker", nargs=2, metavar=("METHOD", "IPC"), help=argparse.SUPPRESS)
    p.add_argument("--iterations", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    require_mnist(args.data_root)
    methods = args.methods.split(",")
    if "dm-official" in methods and args.official is None:
        p.error("dm-official needs --official DIR (a checkout of VICO-UoE/DatasetCondensation)")
    if args.official is not None and (problem := official_dm_problem(args.official)):
        p.error(problem)
    if args.worker:
        args.method, args.ipc = args.worker[0], int(args.worker[1])
        worker(args)
        return
    if args.quick:
        args.epochs, args.models = 20, 1
    budget = QUICK if args.quick else BUDGET
    jobs = []
    for method in methods:
        for ipc in map(int, args.ipcs.split(",")):
            iters = budget.get((method, ipc), 50)
            if args.max_iterations is not None:
                iters = min(iters, args.max_iterations)
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                method,
                str(ipc),
                "--iterations",
                str(iters),
                "--data-root",
                args.data_root,
                "--epochs",
                str(args.epochs),
                "--models",
                str(args.models),
                "--seed",
                str(args.seed),
                "--threads",
                str(args.threads),
            ]
            if args.batch_real is not None:
                cmd += ["--batch-real", str(args.batch_real)]
            if args.official is not None:
                cmd += ["--official", str(args.official.resolve())]
            jobs.append((method, ipc, iters, cmd))

    def run(job):
        method, ipc, iters, cmd = job
        print(f"[bench_distill] {method} ipc {ipc}: {iters} iterations …", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"  {method} ipc {ipc} failed: {err}", flush=True)
            return {"method": method, "ipc": ipc, "error": err}
        row = json.loads(line[0][7:])
        print(
            f"  {method} ipc {ipc}: {100 * row['accuracy_mean']:.2f} ± "
            f"{100 * row['accuracy_std']:.2f} %  {row['distill_seconds']:.1f} s  "
            f"peak {row['peak_rss_mib']:.0f} MiB",
            flush=True,
        )
        return row

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = list(pool.map(run, jobs))
    payload = {
        "benchmark": "bench_distill",
        "command": command_line(),
        "dataset": "mnist-subset",
        "train_size": 8006,
        "test_size": 997,
        "quick": args.quick,
        "budget": {
            "max_iterations": args.max_iterations,
            "batch_real": args.batch_real,
            "eval_epochs": args.epochs,
            "eval_models": args.models,
        },
        "machine": machine(),
        "results": rows,
    }
    print(f"wrote {write_json(args.out, payload)}")


if __name__ == "__main__":
    main()
