"""Small shared pieces of the benchmark scripts: machine facts, peak memory, JSON output."""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MNIST = REPO.parent / "shared" / "data" / "mnist-subset"
RESULTS = REPO / "experiments" / "results"


def require_mnist(root: str | Path) -> Path:
    root = Path(root)
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        sys.exit(
            f"error: MNIST subset not found under {root} (expected MNIST/raw/*-ubyte); "
            "pass --data-root"
        )
    return root


# What the official DM code needs on current torch, as (file, pattern, replacement): its embed()
# views a tensor that is no longer contiguous after the network's last pooling, and DiffAugment's
# Siamese draws copy row 0 over the batch in place (``x[:] = x[0]``), which torch refuses for a
# batch of one (IPC 1) as a self-overlapping write. Neither changes a value.
OFFICIAL_DM_PATCHES = (
    ("networks.py", r"out = out\.view\(out\.size\(0\), -1\)", "out = out.reshape(out.size(0), -1)"),
    ("utils.py", r"(\w+)\[:\] = \1\[0\](?=\r?$)", r"\1[:] = \1[0].clone()"),
)
OFFICIAL_DM_PATCH_TEXT = (
    "networks.py: out = out.view(out.size(0), -1) → out = out.reshape(out.size(0), -1); "
    "utils.py: x[:] = x[0] → x[:] = x[0].clone() (DiffAugment's Siamese draws)"
)


def official_dm_problem(src: str | Path) -> str | None:
    """Why ``src`` is not a checkout of VICO-UoE/DatasetCondensation to run, or ``None``."""
    if not (Path(src) / "main_DM.py").is_file():
        return f"--official {src}: no main_DM.py there"
    return None


def official_dm_copy(src: str | Path, dst: Path) -> Path:
    """A copy under ``dst`` of the user's checkout of VICO-UoE/DatasetCondensation with
    :data:`OFFICIAL_DM_PATCHES` applied."""
    if problem := official_dm_problem(src):
        sys.exit(f"error: {problem}")
    code = dst / "official"
    shutil.copytree(src, code, ignore=shutil.ignore_patterns(".git", "result", "data"))
    for name, pattern, replacement in OFFICIAL_DM_PATCHES:
        with open(code / name, newline="") as f:  # its line endings kept as they are
            text = f.read()
        with open(code / name, "w", newline="") as f:
            f.write(re.sub(pattern, replacement, text, flags=re.MULTILINE))
    return code


def official_dm_command(
    *, ipc: int, iteration: int, batch_real: int, dsa_strategy: str, data_root, save_path, threads
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of one official ``main_DM.py`` experiment on the MNIST
    subset, on the CPU with ``threads`` threads. It runs ``--Iteration`` + 1 image updates
    (0 … ``iteration``); its evaluation, at update 0 only below 2,000 updates, is cut to 1 model
    × 1 epoch. Run it with the copy from :func:`official_dm_copy` as working directory."""
    cmd = [sys.executable, "main_DM.py", "--dataset", "MNIST", "--ipc", str(ipc)]
    cmd += ["--Iteration", str(iteration), "--batch_real", str(batch_real)]
    cmd += ["--num_exp", "1", "--num_eval", "1", "--epoch_eval_train", "1"]
    cmd += ["--dsa_strategy", dsa_strategy]
    cmd += ["--data_path", str(Path(data_root).resolve()), "--save_path", str(save_path)]
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "CUDA_VISIBLE_DEVICES": ""}
    return cmd, env


def peak_rss_mib() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def children_peak_rss_mib() -> float:
    """The largest peak resident set size among this process's finished child processes."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def train_flops_per_image(net, x, y) -> float:
    """FLOPs of one training step's forward and backward on ``(x, y)``, per image, as
    ``torch.utils.flop_counter`` counts them (the input needs no gradient, as in training)."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(net(x), y).backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(x)


def concurrent_gflops(kernel, flops: float, reps: int) -> float:
    """Rate of ``kernel(_)`` (a callable that builds its operands and returns a function
    running the kernel once, ``flops`` each) as the trainers run work: one single-threaded
    instance per intra-op thread at once, ``reps`` timed calls after one warm-up, summed."""
    import torch

    from fedistill.trainer import map_models

    def one(_: int) -> float:
        run = kernel()
        run()
        t0 = time.perf_counter()
        for _ in range(reps):
            run()
        return flops * reps / (time.perf_counter() - t0) / 1e9

    threads = torch.get_num_threads()
    return sum(map_models(one, range(threads), workers=threads))


def gemm_gflops(dtype=None, n: int = 1024, reps: int = 8) -> float:
    """Matrix-multiply rate of the machine as the trainers use it: an n×n GEMM per intra-op
    thread at once (fp32 unless ``dtype``)."""
    import torch

    dtype = dtype or torch.float32

    def kernel():
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        return lambda: a @ b

    return concurrent_gflops(kernel, 2 * n**3, reps)


def conv_gflops(
    dtype=None, batch: int = 32, channels: int = 128, size: int = 16, reps: int = 20
) -> float:
    """Rate (fp32 unless ``dtype``) of the ConvNet's dominant layer alone (a 3×3
    ``channels``→``channels`` convolution on ``size``×``size`` maps, forward) as the trainers
    run it: one per intra-op thread at once. On CPUs where the BLAS GEMM does not use every
    vector unit (MKL on AMD) this is the higher, and the more honest, ceiling."""
    import torch
    import torch.nn.functional as F

    dtype = dtype or torch.float32

    def kernel():
        x = torch.randn(batch, channels, size, size, dtype=dtype)
        w = torch.randn(channels, channels, 3, 3, dtype=dtype)
        return lambda: F.conv2d(x, w, padding=1)

    return concurrent_gflops(kernel, 2 * batch * channels * channels * 9 * size * size, reps)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; empty where it is not readable): speed figures
    differ between the CPU kinds this project runs on, so every benchmark records it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or ""


def machine() -> dict[str, Any]:
    import torch

    from fedistill.models import DEFAULT_GEOMETRY

    return {
        "convnet_geometry": DEFAULT_GEOMETRY,  # how a ConvNet lays out 28-px images here
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_name(),
        "load_average_1m": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def command_option(command: str, name: str, default: int) -> int:
    """The integer value of ``--name`` in a recorded benchmark command (``default`` if absent)."""
    m = re.search(rf"--{re.escape(name)}[ =](\d+)", command)
    return int(m.group(1)) if m else default


def command_line() -> str:
    return "python " + " ".join(
        shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]
    )


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path
