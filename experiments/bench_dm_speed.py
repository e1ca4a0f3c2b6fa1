"""Seconds per DM iteration: ours against the official implementation's structure, one process.

At the official settings (MNIST 28×28, ConvNet-128-3 instance norm, IPC 10, 256 real images per
class per iteration, DSA on, torch with ``--threads`` threads) this times, interleaved round by
round (ours, reference, ours, reference, …, after a warm-up of each):

* ``ours``: :class:`fedistill.distill.dm.DMLoop`, the loop ``fedistill distill --method dm``
  runs (the real branch on ``--threads`` single-threaded workers, overlapping the synthetic
  branch of the previous iteration on one thread);
* ``reference-official``: :class:`experiments.dm_reference.ReferenceDM` with the official
  network (first convolution padded by 3, so 32×32 maps for MNIST);
* ``reference-same-arch``: the same reference loop on fedistill's ConvNet (28×28 maps), which
  isolates the implementation from the architecture;
* ``ours-bf16`` (``--bf16``): our loop with ``precision="bf16"`` (the real branch's deeper
  convolutions in bfloat16).

``--cli N1,N2`` also times ``fedistill distill --method dm`` as whole processes at two iteration
counts, interleaved (fp32, and bf16 with ``--bf16``), and reports the end-to-end seconds per
iteration ``(T(N2) − T(N1)) / (N2 − N1)``, so start-up and loading cancel, against the
reference's in-process figure. ``--accuracy ITERATIONS`` distils the same seed in fp32 and bf16
and evaluates both sets on the held-out test split (``--eval-epochs``, ``--eval-models``), to
state what bf16 costs in accuracy.

It reports the median (and minimum) wall seconds per iteration of each, the process CPU seconds
per iteration (less sensitive to a busy machine), the ratios ours / reference, peak RSS
(``resource.getrusage``; the process peak after our warm-up, and at the end), the load average,
and the settings; the JSON goes to ``--out``.

    python experiments/bench_dm_speed.py --data-root ../shared/data/mnist-subset --iterations 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _bench import (
    DEFAULT_MNIST,
    OFFICIAL_DM_PATCH_TEXT,
    RESULTS,
    command_line,
    machine,
    official_dm_command,
    official_dm_copy,
    official_dm_problem,
    peak_rss_mib,
    require_mnist,
    write_json,
)
from dm_reference import ReferenceDM

from fedistill.augment import DSA, default_strategy
from fedistill.data import load_dataset
from fedistill.distill import get_method
from fedistill.distill._common import init_images, seeded
from fedistill.distill._fast_convnet import single_threaded
from fedistill.distill.dm import DMLoop

REFERENCES = ("official", "same-arch")


def _ours(
    real, ipc: int, batch_real: int, fast: bool, seed: int, precision: str = "fp32"
) -> Callable[[], float]:
    """One iteration of distill_dm's loop per call. The loop starts the next iteration's real
    branch before updating the images; each call waits for it, so every timed call holds one
    real branch and one synthetic branch and no work spills into the reference's turn."""
    config = get_method("dm").make_config(
        batch_real=batch_real, fast_embed=fast, precision=precision
    )
    gen = seeded(seed)
    images, _ = init_images(real, ipc, config.init, gen)
    syn = images.requires_grad_(True)
    optimizer = torch.optim.SGD([syn], lr=config.lr_img, momentum=0.5)
    augment = DSA(config.dsa_strategy or default_strategy(real.info))
    workers = torch.get_num_threads()
    with single_threaded():
        loop = DMLoop(
            real, syn, optimizer, config, gen, augment=augment, workers=workers, iterations=10**9
        )
        loop.upcoming.means()

    def step() -> float:  # as distill_dm's loop runs it
        with single_threaded():
            loss = loop.step()
            loop.upcoming.means()
        return loss

    return step


def _cli_seconds(args, iterations: int, precision: str, out_dir: Path) -> float:
    """Wall seconds of one ``fedistill distill --method dm`` process."""
    cmd = [sys.executable, "-m", "fedistill", "distill", "--method", "dm", "--quiet"]
    cmd += ["--dataset", "mnist", "--data-root", str(args.data_root), "--ipc", str(args.ipc)]
    cmd += ["--iterations", str(iterations), "--batch-real", str(args.batch_real)]
    cmd += ["--seed", str(args.seed), "--option", f"precision={precision}"]
    cmd += ["--out", str(out_dir / f"dm-{precision}-{iterations}.safetensors")]
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _official_seconds(args, iterations: int, code: Path, out_dir: Path) -> float:
    """Wall seconds of the official ``main_DM.py`` at our settings: one experiment, whose
    evaluation (1 model × 1 epoch) cancels between the two iteration counts like start-up does.
    It runs ``--Iteration`` + 1 iterations (0 … N), so the difference of two runs is still
    N2 − N1 iterations."""
    cmd, env = official_dm_command(
        ipc=args.ipc,
        iteration=iterations,
        batch_real=args.batch_real,
        dsa_strategy=args.dsa_strategy,  # ours for MNIST: no flips
        data_root=args.data_root,
        save_path=out_dir,
        threads=args.threads,
    )
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=code, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def cli_end_to_end(args, precisions: list[str]) -> dict:
    """End-to-end seconds per iteration from two iteration counts, whole processes run
    interleaved: our CLI per precision, and the official ``main_DM.py`` with ``--official``."""
    n1, n2 = args.cli
    names = [*precisions, *(["official"] if args.official else [])]
    runs: dict[str, dict[int, list[float]]] = {p: {n1: [], n2: []} for p in names}
    with tempfile.TemporaryDirectory() as tmp:
        code = official_dm_copy(args.official, Path(tmp)) if args.official else None
        for r in range(args.cli_repeats):
            for n in (n1, n2):
                for prec in names:
                    if prec == "official":
                        runs[prec][n].append(_official_seconds(args, n, code, Path(tmp)))
                    else:
                        runs[prec][n].append(_cli_seconds(args, n, prec, Path(tmp)))
            print(
                f"cli round {r + 1}/{args.cli_repeats}: "
                + "  ".join(f"{p}: {runs[p][n1][-1]:.1f}s / {runs[p][n2][-1]:.1f}s" for p in runs),
                flush=True,
            )
    out = {}
    for prec, by_n in runs.items():
        t1, t2 = statistics.median(by_n[n1]), statistics.median(by_n[n2])
        out[prec] = {
            "iterations": [n1, n2],
            "median_wall_s": [t1, t2],
            "wall_s": {str(n): v for n, v in by_n.items()},
            "s_per_iteration": (t2 - t1) / (n2 - n1),
        }
    return out


def accuracy_effect(real, args) -> dict:
    """The same seed distilled in fp32 and in bf16, both evaluated on the held-out split."""
    from fedistill.distill import distill
    from fedistill.evaluate import EvalConfig, evaluate_set

    test = load_dataset("mnist", args.data_root, train=False)
    cfg = EvalConfig(epochs=args.eval_epochs, num_models=args.eval_models)
    out = {"distill_iterations": args.accuracy, "eval": {"epochs": cfg.epochs}, "test_images": 0}
    out["eval"]["models"] = cfg.num_models
    out["test_images"] = len(test)
    for prec in ("fp32", "bf16"):
        t0 = time.perf_counter()
        syn = distill(
            "dm",
            real,
            args.ipc,
            seed=args.seed,
            iterations=args.accuracy,
            batch_real=args.batch_real,
            precision=prec,
        )
        seconds = time.perf_counter() - t0
        res = evaluate_set(syn, test, cfg, seed=args.seed)
        out[prec] = {"accuracies": res.accuracies, "mean": res.mean, "distill_seconds": seconds}
        print(f"accuracy {prec}: {res.mean:.4f} {res.accuracies} ({seconds:.0f} s)", flush=True)
    out["bf16_minus_fp32"] = out["bf16"]["mean"] - out["fp32"]["mean"]
    return out


def _summary(wall: list[float], cpu: list[float]) -> dict:
    return {
        "median_s_per_iteration": statistics.median(wall),
        "min_s_per_iteration": min(wall),
        "median_cpu_s_per_iteration": statistics.median(cpu),
        "wall_s": wall,
        "cpu_s": cpu,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, default=DEFAULT_MNIST)
    p.add_argument("--iterations", type=int, default=10, help="timed iterations of each")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations of each first")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--batch-real", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--references",
        default=",".join(REFERENCES),
        help=f"comma-separated subset of {', '.join(REFERENCES)}",
    )
    p.add_argument("--no-fast-embed", action="store_true", help="ours with the plain embed")
    p.add_argument("--bf16", action="store_true", help="also ours with precision=bf16")
    p.add_argument(
        "--cli",
        type=lambda t: tuple(int(x) for x in t.split(",")),
        default=None,
        metavar="N1,N2",
        help="also time the CLI end to end at these two iteration counts",
    )
    p.add_argument("--cli-repeats", type=int, default=2, help="CLI runs per count")
    p.add_argument(
        "--official",
        type=Path,
        default=None,
        metavar="DIR",
        help="with --cli: also time the official main_DM.py from this checkout of "
        "VICO-UoE/DatasetCondensation (run from a copy with value-preserving compatibility patches)",
    )
    p.add_argument(
        "--accuracy",
        type=int,
        default=0,
        metavar="ITERATIONS",
        help="also distil fp32 and bf16 sets this long and evaluate both (0: skip)",
    )
    p.add_argument(
        "--accuracy-only",
        action="store_true",
        help="with --accuracy: measure only bf16's accuracy effect and add it to --out's JSON "
        "(a long measurement, for a quieter hour than the timings)",
    )
    p.add_argument("--eval-epochs", type=int, default=300)
    p.add_argument("--eval-models", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke test: 2 iterations, batch 32")
    p.add_argument("--out", type=Path, default=RESULTS / "bench_dm_speed.json")
    args = p.parse_args(argv)
    command = command_line()
    refs = [r for r in args.references.split(",") if r]
    if any(r not in REFERENCES for r in refs):
        p.error(f"--references takes {', '.join(REFERENCES)}")
    if args.quick:
        args.iterations, args.warmup, args.batch_real = 2, 1, 32
    if args.cli is not None and (len(args.cli) != 2 or not 0 < args.cli[0] < args.cli[1]):
        p.error("--cli takes two increasing iteration counts, e.g. 3,8")
    if args.official is not None and args.cli is None:
        p.error("--official needs --cli N1,N2 (whole processes at two iteration counts)")
    if args.official is not None and (problem := official_dm_problem(args.official)):
        p.error(problem)  # now, not after the in-process timings

    require_mnist(args.data_root)
    torch.set_num_threads(args.threads)
    if args.accuracy_only:
        if not args.accuracy or not args.out.is_file():
            p.error("--accuracy-only needs --accuracy N and an existing --out JSON")
        doc = json.loads(args.out.read_text())
        real = load_dataset("mnist", args.data_root, train=True)
        doc["bf16_accuracy_effect"] = accuracy_effect(real, args) | {
            "command": command,
            "machine": machine(),
        }
        write_json(args.out, doc)
        print(f"wrote {args.out}")
        return 0
    load_before = os.getloadavg()
    real = load_dataset("mnist", args.data_root, train=True)
    strategy = default_strategy(real.info)
    args.dsa_strategy = strategy
    rss_data = peak_rss_mib()

    runners: dict[str, Callable[[], float]] = {
        "ours": _ours(real, args.ipc, args.batch_real, not args.no_fast_embed, args.seed)
    }
    if args.bf16:
        runners["ours-bf16"] = _ours(
            real, args.ipc, args.batch_real, not args.no_fast_embed, args.seed, "bf16"
        )
    for _ in range(args.warmup):
        runners["ours"]()
        if args.bf16:
            runners["ours-bf16"]()
    rss_ours = peak_rss_mib()
    for r in refs:
        ref = ReferenceDM(
            real.images,
            real.labels,
            real.num_classes,
            args.ipc,
            batch_real=args.batch_real,
            strategy=strategy,
            official_arch=(r == "official"),
            seed=args.seed,
        )
        runners[f"reference-{r}"] = ref.iteration
        for _ in range(args.warmup):
            ref.iteration()

    wall: dict[str, list[float]] = {k: [] for k in runners}
    cpu: dict[str, list[float]] = {k: [] for k in runners}
    for i in range(args.iterations):
        for name, fn in runners.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
        print(
            f"round {i + 1}/{args.iterations}: "
            + "  ".join(f"{k} {wall[k][-1]:.2f}s" for k in runners),
            flush=True,
        )

    results = {k: _summary(wall[k], cpu[k]) for k in runners}
    ours = results["ours"]
    ratios = {
        k: {
            "median_wall": ours["median_s_per_iteration"] / v["median_s_per_iteration"],
            "min_wall": ours["min_s_per_iteration"] / v["min_s_per_iteration"],
            "median_cpu": ours["median_cpu_s_per_iteration"] / v["median_cpu_s_per_iteration"],
        }
        for k, v in results.items()
        if k.startswith("reference")
    }
    if args.bf16:
        ratios |= {
            f"bf16:{k}": {
                "median_wall": results["ours-bf16"]["median_s_per_iteration"]
                / v["median_s_per_iteration"],
                "median_cpu": results["ours-bf16"]["median_cpu_s_per_iteration"]
                / v["median_cpu_s_per_iteration"],
            }
            for k, v in results.items()
            if k.startswith("reference")
        }
    cli = None
    if args.cli is not None:
        cli = cli_end_to_end(args, ["fp32", "bf16"] if args.bf16 else ["fp32"])
        for v in cli.values():
            v["ratio_over_reference"] = {
                k: v["s_per_iteration"] / r["median_s_per_iteration"]
                for k, r in results.items()
                if k.startswith("reference")
            }
        if "official" in cli:
            off = cli["official"]["s_per_iteration"]
            cli["official"]["patch"] = OFFICIAL_DM_PATCH_TEXT
            for prec in ("fp32", "bf16"):
                if prec in cli:
                    cli[prec]["ratio_over_official"] = cli[prec]["s_per_iteration"] / off
    accuracy = accuracy_effect(real, args) if args.accuracy else None
    out = {
        "benchmark": "dm seconds per iteration, ours vs the official implementation's structure",
        "command": command,
        "settings": {
            "dataset": "mnist-subset",
            "train_images": len(real),
            "image_shape": list(real.info.shape),
            "ipc": args.ipc,
            "batch_real_per_class": args.batch_real,
            "classes": real.num_classes,
            "model": "ConvNet-128-3, instance norm",
            "dsa_strategy": strategy,
            "threads": args.threads,
            "warmup": args.warmup,
            "iterations": args.iterations,
            "interleaved": True,
            "fast_embed": not args.no_fast_embed,
            "bf16": args.bf16,
            "quick": args.quick,
        },
        "machine": machine(),
        "results": results,
        "ratio_ours_over_reference": ratios,
        "cli_end_to_end": cli,
        "bf16_accuracy_effect": accuracy,
        "peak_rss_mib": {
            "after_loading_data": rss_data,
            "after_ours_warmup": rss_ours,
            "end": peak_rss_mib(),
        },
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
    }
    write_json(args.out, out)

    print(f"\ncommand: {command}")
    for k, v in results.items():
        print(
            f"{k:>28}: median {v['median_s_per_iteration']:.3f} s/it "
            f"(min {v['min_s_per_iteration']:.3f}, cpu {v['median_cpu_s_per_iteration']:.3f})"
        )
    for k, v in ratios.items():
        print(f"ours / {k}: {v['median_wall']:.3f} (median wall), {v['median_cpu']:.3f} (cpu)")
    for prec, v in (cli or {}).items():
        print(
            f"cli {prec}: {v['s_per_iteration']:.3f} s/it; / reference: {v['ratio_over_reference']}"
        )
    print(f"peak RSS: {out['peak_rss_mib']}  load: {out['load_average']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
