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
  isolates the implementation from the architecture.

It reports the median (and minimum) wall seconds per iteration of each, the process CPU seconds
per iteration (less sensitive to a busy machine), the ratios ours / reference, peak RSS
(``resource.getrusage``; the process peak after our warm-up, and at the end), the load average,
and the settings; the JSON goes to ``--out``.

    python experiments/bench_dm_speed.py --data-root ../shared/data/mnist-subset --iterations 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _bench import (
    DEFAULT_MNIST,
    RESULTS,
    command_line,
    machine,
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


def _ours(real, ipc: int, batch_real: int, fast: bool, seed: int) -> Callable[[], float]:
    """One iteration of distill_dm's loop per call. The loop starts the next iteration's real
    branch before updating the images; each call waits for it, so every timed call holds one
    real branch and one synthetic branch and no work spills into the reference's turn."""
    config = get_method("dm").make_config(batch_real=batch_real, fast_embed=fast)
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

    require_mnist(args.data_root)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    real = load_dataset("mnist", args.data_root, train=True)
    strategy = default_strategy(real.info)
    rss_data = peak_rss_mib()

    runners: dict[str, Callable[[], float]] = {
        "ours": _ours(real, args.ipc, args.batch_real, not args.no_fast_embed, args.seed)
    }
    for _ in range(args.warmup):
        runners["ours"]()
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
        if k != "ours"
    }
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
            "quick": args.quick,
        },
        "machine": machine(),
        "results": results,
        "ratio_ours_over_reference": ratios,
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
        print(
            f"ours / {k}: {v['median_wall']:.3f} (median wall), {v['min_wall']:.3f} (min), "
            f"{v['median_cpu']:.3f} (cpu)"
        )
    print(f"peak RSS: {out['peak_rss_mib']}  load: {out['load_average']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
