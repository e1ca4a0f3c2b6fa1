"""Seconds per DC outer iteration: ``fedistill distill --method dc`` against the official code.

Whole processes, run one after another and interleaved (ours, reference, ours, reference, …):
for each pair, each side runs at two iteration counts (``--counts``, e.g. 1 and 3 outer
iterations), so start-up (imports, loading the data) cancels and the seconds per outer
iteration are Δseconds / Δiterations. Settings are the official ones for MNIST at IPC 10:
ConvNet-128-3 with instance norm, ``batch_real`` 256, initialisation from real images, no DSA,
``(outer_loop, inner_loop) = get_loops(10) = (10, 50)``, lr_img 0.1, lr_net 0.01,
batch_train 256, on the CPU with torch's default thread count.

* ``ours``: ``python -m fedistill distill --method dc --dataset mnist --ipc 10 --iterations N
  --batch-real 256 --init real --quiet`` (``--loops`` adds ``-o outer_loop=… -o inner_loop=…``).
* the reference, with ``--official DIR`` (a checkout of ``VICO-UoE/DatasetCondensation`` the
  user provides; it is copied to a temporary folder and never modified in place): its
  ``main.py --method DC --dataset MNIST --model ConvNet --ipc 10 --init real --batch_real 256
  --Iteration N-1 --num_exp 1 --num_eval 0 --data_path DATA --save_path TMP`` with
  ``CUDA_VISIBLE_DEVICES=""`` (its device is ``cuda`` only when one is visible). ``--Iteration
  N-1`` because its loop runs ``Iteration + 1`` outer iterations; ``--num_eval 0`` skips the
  evaluation of 20 models × 300 epochs it runs at iteration 0 (not part of an outer iteration;
  it would cancel in the difference anyway). ``--data_path`` is ``--data-root``, which must be in
  torchvision's MNIST layout (``MNIST/raw/*-ubyte``; nothing is downloaded). With ``--loops``
  (a reduced budget) the copy's ``get_loops(args.ipc)`` call is replaced by the given pair —
  the only edit, recorded in the JSON.
* without ``--official``: ``experiments/dc_reference.py``, our re-creation of the official
  loop's structure and costs.

Per pair it reports each side's seconds per outer iteration and the ratio ours / reference, and
the median ratio over pairs; wall and CPU seconds (the children's user + system time) of every
run, and the 1-minute load average before each. The JSON goes to ``--out``. After the pairs it
adds the fp32 work bound (:func:`work_bound`): the FLOPs one outer iteration cannot avoid and
the fastest fp32 kernel rate measured here, so the ratio can be read against what this CPU
allows; ``--bound-only`` recomputes that for a recorded JSON.

    python experiments/bench_dc_speed.py --official /tmp/dc_official --counts 1,3 --pairs 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import (
    DEFAULT_MNIST,
    REPO,
    RESULTS,
    command_line,
    conv_gflops,
    gemm_gflops,
    machine,
    require_mnist,
    train_flops_per_image,
    write_json,
)

IPC = 10
OFFICIAL_LOOPS_CALL = "args.outer_loop, args.inner_loop = get_loops(args.ipc)"


def _ints(text: str, n: int | None, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"error: {what} takes comma-separated integers, got '{text}'") from None
    if (n is not None and len(values) != n) or any(v < 1 for v in values):
        raise SystemExit(f"error: {what} takes {n or 'several'} positive integers, got '{text}'")
    return values


def ours_command(args, n: int, out_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "fedistill", "distill", "--method", "dc", "--dataset", "mnist"]
    cmd += ["--data-root", str(args.data_root), "--ipc", str(IPC), "--iterations", str(n)]
    cmd += ["--batch-real", str(args.batch_real), "--init", "real", "--seed", "0", "--quiet"]
    cmd += ["--out", str(out_dir / f"ours_{n}.pt")]
    if args.loops:
        cmd += ["-o", f"outer_loop={args.loops[0]}", "-o", f"inner_loop={args.loops[1]}"]
    return cmd


def official_copy(source: Path, loops: tuple[int, int] | None, work: Path) -> tuple[Path, list]:
    """A private copy of the user's checkout (never edited in place); the edits made to it."""
    if not (source / "main.py").is_file() or not (source / "utils.py").is_file():
        raise SystemExit(f"error: --official {source} has no main.py and utils.py")
    dest = work / "official"
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(".git", "result", "data"))
    patches = []
    if loops:
        main_py = dest / "main.py"
        text = main_py.read_text()
        if OFFICIAL_LOOPS_CALL not in text:
            raise SystemExit("error: the official main.py has no get_loops call to replace")
        new = f"args.outer_loop, args.inner_loop = {loops[0]}, {loops[1]}"
        main_py.write_text(text.replace(OFFICIAL_LOOPS_CALL, new))
        patches.append({"file": "main.py", "replaced": OFFICIAL_LOOPS_CALL, "with": new})
    return dest, patches


def official_command(args, n: int, code: Path, out_dir: Path) -> list[str]:
    cmd = [sys.executable, str(code / "main.py"), "--method", "DC", "--dataset", "MNIST"]
    cmd += ["--model", "ConvNet", "--ipc", str(IPC), "--init", "real"]
    cmd += ["--batch_real", str(args.batch_real), "--Iteration", str(n - 1)]
    cmd += ["--num_exp", "1", "--num_eval", "0", "--data_path", str(args.data_root)]
    cmd += ["--save_path", str(out_dir / f"official_{n}")]
    return cmd


def reference_command(args, n: int) -> list[str]:
    cmd = [sys.executable, str(REPO / "experiments" / "dc_reference.py")]
    cmd += ["--data-root", str(args.data_root), "--iterations", str(n)]
    cmd += ["--batch-real", str(args.batch_real)]
    if args.loops:
        cmd += ["--loops", f"{args.loops[0]},{args.loops[1]}"]
    return cmd


def work_bound(loops: tuple[int, int], batch_real: int, classes: int = 10) -> dict:
    """What one outer iteration costs in fp32 whoever implements it, and how fast this machine
    can do it: the FLOPs of the passes the algorithm cannot skip (each class's ``batch_real``
    real images forward and backward at every matching step; the synthetic set forward and
    backward in each of the ``(outer − 1) × inner`` inner epochs), counted by torch's FLOP
    counter on the default ConvNet-128-3 with a 28-px MNIST batch (the synthetic matching steps
    and every elementwise kernel are left out: a lower bound), divided by the fastest fp32
    kernel rate measured here (the GEMM, or the dominant convolution alone, whichever is
    higher). That gives a practical floor for the seconds, not a proof: a better kernel than
    oneDNN's could go under it."""
    import torch

    from fedistill.models import ConvNet

    torch.manual_seed(0)
    net = ConvNet(1, classes, (28, 28), 128, 3, "instance")
    x, y = torch.randn(32, 1, 28, 28), torch.arange(32) % classes
    per_image = train_flops_per_image(net, x, y)
    outer, inner = loops
    images = classes * batch_real * outer + (outer - 1) * inner * classes * IPC
    load = os.getloadavg()[0]
    gemm = statistics.median(gemm_gflops() for _ in range(5))
    conv = statistics.median(conv_gflops() for _ in range(5))
    rate = max(gemm, conv)
    gflop = images * per_image / 1e9
    return {
        "gflop_per_image_step": per_image / 1e9,
        "images_per_outer_iteration": images,
        "gflop_per_outer_iteration_at_least": gflop,
        "fp32_gemm_gflops": gemm,
        "fp32_conv_gflops": conv,
        "fp32_rate_used": rate,
        "gemm_threads": torch.get_num_threads(),
        "load_1m_before": load,
        "seconds_at_least": gflop / rate,
        "machine": machine(),
    }


def timed(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> dict:
    """Run ``cmd`` to completion; its wall seconds, CPU seconds and the load before it."""
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.run(cmd, env=env, cwd=cwd, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        tail = log.read_text()[-2000:]
        raise SystemExit(f"error: {' '.join(cmd[:4])} … exited {rc}:\n{tail}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load_1m_before": load}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, default=DEFAULT_MNIST)
    p.add_argument("--official", type=Path, default=None, help="a DatasetCondensation checkout")
    p.add_argument("--counts", default="1,3", help="the two outer-iteration counts")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--batch-real", type=int, default=256)
    p.add_argument("--loops", default=None, help="OUTER,INNER: a reduced budget for both sides")
    p.add_argument("--out", type=Path, default=RESULTS / "bench_dc_speed.json")
    p.add_argument(
        "--bound-only",
        action="store_true",
        help="only (re)compute the fp32 work bound of the JSON at --out, for its settings "
        "(on a quiet machine: it measures the GEMM and convolution rates)",
    )
    args = p.parse_args(argv)
    if args.bound_only:
        return add_bound(args.out)
    command = command_line()
    counts = _ints(args.counts, 2, "--counts")
    if counts[0] >= counts[1]:
        p.error("--counts takes two increasing counts, e.g. 1,3")
    if args.pairs < 1 or args.batch_real < 1:
        p.error("--pairs and --batch-real must be ≥ 1")
    args.loops = _ints(args.loops, 2, "--loops") if args.loops else None
    args.data_root = require_mnist(args.data_root).resolve()
    train_images = len(list(_mnist_labels(args.data_root)))

    work = Path(tempfile.mkdtemp(prefix="bench_dc_"))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    patches: list = []
    if args.official is not None:
        code, patches = official_copy(args.official.resolve(), args.loops, work)
        reference = "official main.py"

        def ref_cmd(n: int) -> list[str]:
            return official_command(args, n, code, work)
    else:
        reference = "experiments/dc_reference.py (re-creation)"

        def ref_cmd(n: int) -> list[str]:
            return reference_command(args, n)

    runs, pairs = [], []

    def report(bound: dict | None = None) -> dict:
        """The JSON of the pairs so far (written after every pair: a stopped run keeps them),
        with the work bound once it is measured."""
        loops = args.loops or (10, 50)
        out = {
            "benchmark": "dc seconds per outer iteration, whole processes: ours vs the official code",
            "command": command,
            "reference": reference,
            "official_patches": patches,
            "settings": {
                "dataset": "mnist-subset",
                "train_images": train_images,
                "ipc": IPC,
                "batch_real_per_class": args.batch_real,
                "init": "real",
                "dsa": False,
                "model": "ConvNet-128-3, instance norm (official: 28x28 input padded to 32x32)",
                "outer_loop": loops[0],
                "inner_loop": loops[1],
                "official_loops": args.loops is None,
                "counts": list(counts),
                "pairs": args.pairs,
                "interleaved": "ours, reference per count, one process at a time",
                "device": "cpu",
            },
            "machine": machine(),
            "runs": runs,
            "pairs": pairs,
            "pairs_completed": len(pairs),
            "warning": (
                "a side's wall seconds fell from the shorter to the longer run in some pair: "
                "start-up and load varied more than the iterations cost; use the CPU ratio or "
                "a quieter machine"
                if any(
                    p[s]["wall_s_per_iteration"] <= 0 for p in pairs for s in ("ours", "reference")
                )
                else None
            ),
            "median_ratio_wall": statistics.median(p["ratio_wall"] for p in pairs),
            "median_ratio_cpu": statistics.median(p["ratio_cpu"] for p in pairs),
            "median_s_per_iteration": {
                side: statistics.median(p[side]["wall_s_per_iteration"] for p in pairs)
                for side in ("ours", "reference")
            },
        }
        if bound:
            out["bound"] = bound
        write_json(args.out, out)
        return out

    try:
        for i in range(args.pairs):
            times: dict[str, dict[int, dict]] = {"ours": {}, "reference": {}}
            for n in counts:
                for side, cmd in (("ours", ours_command(args, n, work)), ("reference", ref_cmd(n))):
                    r = timed(cmd, env, REPO, work / f"{side}_{n}_{i}.log")
                    r.update(pair=i + 1, side=side, iterations=n)
                    runs.append(r)
                    times[side][n] = r
                    print(
                        f"pair {i + 1} {side:>9} {n} it: {r['wall_s']:.1f} s wall, "
                        f"{r['cpu_s']:.1f} s cpu (load {r['load_1m_before']:.1f})",
                        flush=True,
                    )
            d = counts[1] - counts[0]
            per = {
                side: {
                    "wall_s_per_iteration": (t[counts[1]]["wall_s"] - t[counts[0]]["wall_s"]) / d,
                    "cpu_s_per_iteration": (t[counts[1]]["cpu_s"] - t[counts[0]]["cpu_s"]) / d,
                }
                for side, t in times.items()
            }
            pair = {
                "pair": i + 1,
                **per,
                "ratio_wall": per["ours"]["wall_s_per_iteration"]
                / per["reference"]["wall_s_per_iteration"],
                "ratio_cpu": per["ours"]["cpu_s_per_iteration"]
                / per["reference"]["cpu_s_per_iteration"],
            }
            pairs.append(pair)
            print(f"pair {i + 1}: ours / reference = {pair['ratio_wall']:.3f} (wall)", flush=True)
            report()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    out = report(work_bound(args.loops or (10, 50), args.batch_real))
    print(f"\ncommand: {command}")
    print(
        f"median ours / reference: {out['median_ratio_wall']:.3f} wall, "
        f"{out['median_ratio_cpu']:.3f} cpu; s/iteration {out['median_s_per_iteration']}"
    )
    print(f"wrote {args.out}")
    return 0


def add_bound(path: Path) -> int:
    """``--bound-only``: the work bound for a recorded run's settings, written into its JSON."""
    try:
        out = json.loads(path.read_text())
        st = out["settings"]
        loops, batch_real = (st["outer_loop"], st["inner_loop"]), st["batch_real_per_class"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"error: {path} is not a bench_dc_speed JSON ({e})") from None
    out["bound"] = work_bound(loops, batch_real) | {"command": command_line()}
    write_json(path, out)
    b = out["bound"]
    print(
        f"≥ {b['gflop_per_outer_iteration_at_least']:.0f} GFLOP per outer iteration at "
        f"{b['fp32_rate_used']:.0f} GFLOP/s (GEMM {b['fp32_gemm_gflops']:.0f}, conv "
        f"{b['fp32_conv_gflops']:.0f}) → ≥ {b['seconds_at_least']:.1f} s; wrote {path}"
    )
    return 0


def _mnist_labels(root: Path):
    """The training labels of the MNIST copy under ``root`` (idx format, read directly)."""
    data = (root / "MNIST" / "raw" / "train-labels-idx1-ubyte").read_bytes()
    if data[:4] != b"\x00\x00\x08\x01":
        raise SystemExit(f"error: {root} does not hold an MNIST label file")
    n = int.from_bytes(data[4:8], "big")
    return data[8 : 8 + n]


if __name__ == "__main__":
    raise SystemExit(main())
