"""Evaluation throughput: the multi-model trainer against the reference's one-model-at-a-time loop.

At the evaluation protocol's settings (ConvNet-128-3 instance norm, an IPC-10 set drawn at random
from the training split, SGD lr 0.01 / momentum 0.9 / weight decay 5e-4, batch 256, lr ÷10 at
half the epochs, DSA on, torch with ``--threads`` threads) this times, in one process and
interleaved round by round after a warm-up of each:

* ``ours-M{1,4,16}``: :func:`fedistill.trainer.train_many` training M models at once (M seeds,
  each its own init, batch order and augmentation draws; one single-threaded worker per thread;
  batches in chunks of :func:`fedistill.trainer.auto_chunk` images, as ``evaluate`` runs it);
* ``ours-M16-modules`` (``--unfused``): the same at the largest M through the network's own
  modules (``fast=False``) instead of the fused block of :mod:`fedistill.convblocks` — the same
  trajectories bit for bit, so only the time differs;
* ``reference``: a re-creation of the reference's ``evaluate_synset`` (``utils.py`` of
  VICO-UoE/DatasetCondensation) run for ``--reference-models`` models one after another: a
  ``DataLoader`` over a ``TensorDataset`` (shuffle, batch 256), its ``DiffAugment`` with
  ``seed=-1`` (per-sample draws from the global RNG, affine matrices built in Python), the
  per-batch NumPy accuracy and ``loss.item()``, ``Epoch + 1`` epochs with a fresh optimizer at the
  lr drop — on the official network (:class:`experiments.dm_reference.OfficialConvNet`; the same
  architecture as ``ConvNet(geometry="reference")``).

For each it reports models × epochs per second (the reference counted with the epochs it really
runs, ``Epoch + 1``), achieved GFLOP/s (training FLOPs counted by ``torch.utils.flop_counter``
on one step, times images × epochs), the same figure as a fraction of the best fp32 kernel
rate measured in the same rounds (``--threads`` threads: the higher of a 1024² SGEMM and the
ConvNet's dominant convolution alone; on AMD, MKL's GEMM reaches about half the convolution's
rate), and of the GEMM rate alone, the process peak RSS after
each one's warm-up (in the order M = 1, reference, M = 4, M = 16, so increases are attributable),
the untimed test accuracy of the trained models, and the ratios ours / reference. Throughput
figures from a shared machine are noisy; the ratios are interleaved so load hits all alike, and
the JSON records the load average before and after.

    python experiments/bench_eval_speed.py --epochs 4 --rounds 2
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _bench import (
    DEFAULT_MNIST,
    RESULTS,
    command_line,
    conv_gflops,
    gemm_gflops,
    machine,
    peak_rss_mib,
    train_flops_per_image,
    write_json,
)
from dm_reference import OfficialConvNet
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from fedistill.augment import DSA, default_strategy
from fedistill.data import LabeledImages, load_dataset
from fedistill.distill import distill
from fedistill.evaluate import EvalConfig, accuracy, evaluate_arrays
from fedistill.models import ConvNet
from fedistill.trainer import auto_chunk, train_many

TARGET_M16 = 2.5  # issue 17: ≥ 2.5× the re-created reference loop at M = 16, fp32


# --------------------------------------------------------------------------- the reference


class _Param:
    """The reference's ``ParamDiffAug`` (``aug_mode='S'``)."""

    prob_flip = 0.5
    ratio_scale = 1.2
    ratio_rotate = 15.0
    ratio_crop_pad = 0.125
    ratio_cutout = 0.5
    brightness = 1.0
    saturation = 2.0
    contrast = 0.5


def _scale(x: Tensor, p: _Param) -> Tensor:
    r = p.ratio_scale
    sx = torch.rand(x.shape[0]) * (r - 1.0 / r) + 1.0 / r
    sy = torch.rand(x.shape[0]) * (r - 1.0 / r) + 1.0 / r
    theta = [[[sx[i], 0, 0], [0, sy[i], 0]] for i in range(x.shape[0])]
    theta = torch.tensor(theta, dtype=torch.float)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def _rotate(x: Tensor, p: _Param) -> Tensor:
    t = (torch.rand(x.shape[0]) - 0.5) * 2 * p.ratio_rotate / 180 * float(np.pi)
    theta = [
        [[torch.cos(t[i]), torch.sin(-t[i]), 0], [torch.sin(t[i]), torch.cos(t[i]), 0]]
        for i in range(x.shape[0])
    ]
    theta = torch.tensor(theta, dtype=torch.float)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def _flip(x: Tensor, p: _Param) -> Tensor:
    return torch.where(torch.rand(x.size(0), 1, 1, 1) < p.prob_flip, x.flip(3), x)


def _brightness(x: Tensor, p: _Param) -> Tensor:
    return x + (torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype) - 0.5) * p.brightness


def _saturation(x: Tensor, p: _Param) -> Tensor:
    m = x.mean(dim=1, keepdim=True)
    return (x - m) * (torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype) * p.saturation) + m


def _contrast(x: Tensor, p: _Param) -> Tensor:
    m = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - m) * (torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype) + p.contrast) + m


def _crop(x: Tensor, p: _Param) -> Tensor:
    sx, sy = int(x.size(2) * p.ratio_crop_pad + 0.5), int(x.size(3) * p.ratio_crop_pad + 0.5)
    tx = torch.randint(-sx, sx + 1, size=[x.size(0), 1, 1])
    ty = torch.randint(-sy, sy + 1, size=[x.size(0), 1, 1])
    gb, gx, gy = torch.meshgrid(
        torch.arange(x.size(0)), torch.arange(x.size(2)), torch.arange(x.size(3)), indexing="ij"
    )
    gx = torch.clamp(gx + tx + 1, 0, x.size(2) + 1)
    gy = torch.clamp(gy + ty + 1, 0, x.size(3) + 1)
    xp = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return xp.permute(0, 2, 3, 1).contiguous()[gb, gx, gy].permute(0, 3, 1, 2)


def _cutout(x: Tensor, p: _Param) -> Tensor:
    cs = int(x.size(2) * p.ratio_cutout + 0.5), int(x.size(3) * p.ratio_cutout + 0.5)
    ox = torch.randint(0, x.size(2) + (1 - cs[0] % 2), size=[x.size(0), 1, 1])
    oy = torch.randint(0, x.size(3) + (1 - cs[1] % 2), size=[x.size(0), 1, 1])
    gb, gx, gy = torch.meshgrid(
        torch.arange(x.size(0)), torch.arange(cs[0]), torch.arange(cs[1]), indexing="ij"
    )
    gx = torch.clamp(gx + ox - cs[0] // 2, min=0, max=x.size(2) - 1)
    gy = torch.clamp(gy + oy - cs[1] // 2, min=0, max=x.size(3) - 1)
    mask = torch.ones(x.size(0), x.size(2), x.size(3), dtype=x.dtype)
    mask[gb, gx, gy] = 0
    return x * mask.unsqueeze(1)


_AUGMENT_FNS = {
    "color": [_brightness, _saturation, _contrast],
    "crop": [_crop],
    "cutout": [_cutout],
    "flip": [_flip],
    "scale": [_scale],
    "rotate": [_rotate],
}


def reference_diff_augment(x: Tensor, strategy: str, p: _Param) -> Tensor:
    """``DiffAugment(x, strategy, seed=-1, param)``: one op per call, per-sample draws."""
    ops = strategy.split("_")
    op = ops[torch.randint(0, len(ops), size=(1,)).item()]
    for f in _AUGMENT_FNS[op]:
        x = f(x, p)
    # the reference's x.contiguous(); a permuted 1-channel tensor counts as contiguous but would
    # send the network channels-last (and break the official network's .view), so force NCHW
    return x.clone(memory_format=torch.contiguous_format)


def _reference_epoch(loader, net, optimizer, criterion, strategy, param, train: bool):
    loss_avg, acc_avg, num_exp = 0.0, 0, 0
    net.train() if train else net.eval()
    for datum in loader:
        img = datum[0].float()
        if train:
            img = reference_diff_augment(img, strategy, param)
        lab = datum[1].long()
        n_b = lab.shape[0]
        output = net(img)
        loss = criterion(output, lab)
        acc = np.sum(np.equal(np.argmax(output.cpu().data.numpy(), axis=-1), lab.cpu().numpy()))
        loss_avg += loss.item() * n_b
        acc_avg += acc
        num_exp += n_b
        if train:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return loss_avg / num_exp, acc_avg / num_exp


def reference_train(net: nn.Module, images: Tensor, labels: Tensor, epochs: int, strategy: str):
    """The training part of the reference's ``evaluate_synset`` (it runs ``epochs + 1``)."""
    lr = 0.01
    lr_schedule = [epochs // 2 + 1]
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=0.0005)
    criterion = nn.CrossEntropyLoss()
    loader = DataLoader(TensorDataset(images, labels), batch_size=256, shuffle=True, num_workers=0)
    param = _Param()
    for ep in range(epochs + 1):
        _reference_epoch(loader, net, optimizer, criterion, strategy, param, train=True)
        if ep in lr_schedule:
            lr *= 0.1
            optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=0.0005)
    return net


# --------------------------------------------------------------------------- measurement


def reference_net(info, width: int, depth: int) -> nn.Module:
    size = (info.height, info.width)
    if size == (28, 28):
        return OfficialConvNet(info.channels, info.num_classes, size, width, depth)
    # the official network pads a 1-channel input by 3 whatever its size; on 8×8 digits ours
    # (same layers, padding 1) keeps the two sides on one architecture
    return ConvNet(info.channels, info.num_classes, size, width, depth, geometry="reference")


def our_net(info, width: int, depth: int) -> nn.Module:
    return ConvNet(
        info.channels, info.num_classes, (info.height, info.width), width, depth, "instance",
        geometry="reference",
    )  # fmt: skip


def _conv_inputs(net: nn.Module, x: Tensor) -> list[tuple[nn.Conv2d, tuple[int, ...]]]:
    """Every convolution of ``net`` with the shape of its input on a forward of ``x``."""
    seen: list[tuple[nn.Conv2d, tuple[int, ...]]] = []
    hooks = [
        m.register_forward_pre_hook(lambda mod, inp: seen.append((mod, tuple(inp[0].shape))))
        for m in net.modules()
        if isinstance(m, nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _median_ms(fn: Callable[[], object], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _conv_step_ms(conv: nn.Conv2d, shape: tuple[int, ...], input_grad: bool) -> float:
    """Median ms of ``conv``'s forward plus its backward (weight, bias, and the input when
    ``input_grad``) on an input of ``shape``, on the calling thread."""
    inp, w, b = torch.randn(shape), conv.weight.detach(), conv.bias
    b = None if b is None else b.detach()
    pad = list(conv.padding)
    grad = torch.randn_like(F.conv2d(inp, w, b, padding=pad))
    mask = [input_grad, True, b is not None]
    forward = _median_ms(lambda: F.conv2d(inp, w, b, padding=pad), 20)
    backward = _median_ms(
        lambda: torch.ops.aten.convolution_backward(
            grad, inp, w, [w.shape[0]], [1, 1], pad, [1, 1], False, [0, 0], 1, mask
        ),
        20,
    )
    return forward + backward


def step_breakdown(x: Tensor, y: Tensor, info, args, epochs: int) -> dict:
    """Where one model's epoch goes, on one thread: the epoch as ``train_classifier`` runs it
    (chunks of ``auto_chunk``), against the convolutions alone — each layer's forward and
    backward (weights, bias, and the input where a layer below needs it) at the same chunk
    shapes, as many times as an epoch runs them. Their share bounds what any faster code for
    the other layers (norm, ReLU, pooling, loss, optimiser, DSA) could gain: 1 / share."""
    from fedistill.trainer import train_classifier

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(args.seed)
        net = our_net(info, args.width, args.depth)
        chunk = auto_chunk(net) or len(x)
        gen = torch.Generator().manual_seed(args.seed)
        augment = DSA(default_strategy(info))
        train_classifier(
            net, x, y, EvalConfig(epochs=2), augment=augment, generator=gen, chunk=chunk
        )
        t0 = time.perf_counter()
        train_classifier(
            net, x, y, EvalConfig(epochs=epochs), augment=augment, generator=gen, chunk=chunk
        )
        epoch_ms = 1e3 * (time.perf_counter() - t0) / epochs
        # the chunk lengths one epoch runs: batches of 256, each cut into chunks
        lengths = [
            min(chunk, b - s)
            for b in (min(256, len(x) - i) for i in range(0, len(x), 256))
            for s in range(0, b, chunk)
        ]
        conv_ms = 0.0
        for n in sorted(set(lengths)):
            layers = _conv_inputs(net, x[:1].expand(n, *x.shape[1:]))
            for i, (conv, shape) in enumerate(layers):  # no input gradient for the image
                conv_ms += lengths.count(n) * _conv_step_ms(conv, shape, input_grad=i > 0)
    finally:
        torch.set_num_threads(threads)
    return {
        "threads": 1,
        "chunk": chunk,
        "epochs_timed": epochs,
        "epoch_ms": epoch_ms,
        "convolutions_alone_ms": conv_ms,
        "convolution_share": conv_ms / epoch_ms,
        "bound_from_other_layers": epoch_ms / conv_ms,
    }


def run_dataset(name: str, train: LabeledImages, test: LabeledImages, args) -> dict:
    info = train.info
    syn = distill("random", train, args.ipc, seed=args.seed)
    x, y = syn.images, syn.labels
    strategy = default_strategy(info)
    augment = DSA(strategy)
    cfg = EvalConfig(epochs=args.epochs, batch_size=256)
    flops_img = train_flops_per_image(our_net(info, args.width, args.depth), x[:8], y[:8])
    test_cut = LabeledImages(test.images[: args.test_size], test.labels[: args.test_size], info)

    trained: dict[str, list[nn.Module]] = {}

    def ours(m: int, precision: str = "fp32", fast: bool = True) -> Callable[[int], float]:
        key = f"ours-M{m}" + ("-bf16" if precision == "bf16" else "") + ("" if fast else "-modules")

        def run(r: int) -> float:
            models, gens = [], []
            for k in range(m):
                s = args.seed * 1000 + 100 * r + k
                torch.manual_seed(s)
                gens.append(torch.Generator().manual_seed(s))
                models.append(our_net(info, args.width, args.depth))
            t0 = time.perf_counter()
            chunk = None if args.no_chunk else auto_chunk(models[0])
            trained[key] = train_many(
                models,
                x,
                y,
                cfg,
                gens,
                augment=augment,
                chunk=chunk,
                precision=precision,
                fast=fast,
            )
            return time.perf_counter() - t0

        return run

    def reference(r: int) -> float:
        torch.manual_seed(args.seed * 1000 + 100 * r)
        nets = [reference_net(info, args.width, args.depth) for _ in range(args.reference_models)]
        t0 = time.perf_counter()
        for net in nets:
            reference_train(net, x, y, args.epochs, strategy)
        trained["reference"] = nets
        return time.perf_counter() - t0

    runners: dict[str, tuple[Callable[[int], float], int, int]] = {}  # fn, models, epochs run
    rss: dict[str, float] = {}
    order = [("ours-M1", 1), ("reference", 0)] + [(f"ours-M{m}", m) for m in args.models if m > 1]
    if args.unfused:
        order.append((f"ours-M{max(args.models)}-modules", max(args.models)))
    if args.bf16:
        order.append((f"ours-M{max(args.models)}-bf16", max(args.models)))
    for key, m in order:
        if key == "reference":
            runners[key] = (reference, args.reference_models, args.epochs + 1)
        elif key.endswith("-modules"):
            runners[key] = (ours(m, fast=False), m, args.epochs)
        elif key.endswith("-bf16"):
            runners[key] = (ours(m, "bf16"), m, args.epochs)
        elif m in args.models:
            runners[key] = (ours(m), m, args.epochs)
        else:
            continue
        runners[key][0](-1)  # warm-up
        rss[key] = peak_rss_mib()
    seconds: dict[str, list[float]] = {k: [] for k in runners}
    sgemm: list[float] = []
    bgemm: list[float] = []
    sconv: list[float] = []
    bconv: list[float] = []

    def kernel_rates() -> None:
        sgemm.append(gemm_gflops())
        bgemm.append(gemm_gflops(torch.bfloat16))
        sconv.append(conv_gflops())
        bconv.append(conv_gflops(torch.bfloat16))

    for r in range(args.rounds):
        kernel_rates()
        for key, (fn, _, _) in runners.items():
            seconds[key].append(fn(r))
        kernel_rates()
        print(
            f"[{name}] round {r + 1}/{args.rounds}: "
            + "  ".join(f"{k} {v[-1]:.1f}s" for k, v in seconds.items()),
            flush=True,
        )
    peak = statistics.median(sgemm)
    bpeak = statistics.median(bgemm)
    best = max(peak, statistics.median(sconv))
    bbest = max(bpeak, statistics.median(bconv))
    results = {}
    for key, (_, m, epochs_run) in runners.items():
        med = statistics.median(seconds[key])
        rate = m * epochs_run / med
        gflops = rate * len(x) * flops_img / 1e9
        accs = [accuracy(net, test_cut) for net in trained[key]]
        results[key] = {
            "models": m,
            "epochs_run_per_model": epochs_run,
            "seconds": seconds[key],
            "median_seconds": med,
            "model_epochs_per_second": rate,
            "achieved_gflops": gflops,
            "fraction_of_gemm_rate": gflops / (bpeak if key.endswith("-bf16") else peak),
            "fraction_of_best_rate": gflops / (bbest if key.endswith("-bf16") else best),
            "peak_rss_mib_after_warmup": rss[key],
            "test_accuracy_last_round": accs,
        }
    bf16_effect = None
    if args.accuracy_epochs > 0:
        per = {}
        for precision in ("fp32", "bf16"):
            ecfg = EvalConfig(
                epochs=args.accuracy_epochs,
                num_models=args.accuracy_models,
                model_kwargs={"width": args.width, "depth": args.depth, "geometry": "reference"},
                precision=precision,
            )
            t0 = time.perf_counter()
            res = evaluate_arrays(x, y, info, test, ecfg, seed=args.seed)
            per[precision] = res.to_dict() | {"seconds": time.perf_counter() - t0}
            print(f"[{name}] {precision}: accuracy {res.mean:.4f} ± {res.std:.4f}", flush=True)
        diffs = [
            b - a for a, b in zip(per["fp32"]["accuracies"], per["bf16"]["accuracies"], strict=True)
        ]
        bf16_effect = {
            "epochs": args.accuracy_epochs,
            "models": args.accuracy_models,
            "test_images": len(test),
            "fp32": per["fp32"],
            "bf16": per["bf16"],
            "bf16_minus_fp32_per_seed": diffs,
            "bf16_minus_fp32_mean": statistics.fmean(diffs),
        }
    ref = results["reference"]["model_epochs_per_second"]
    ratios = {k: v["model_epochs_per_second"] / ref for k, v in results.items() if k != "reference"}
    breakdown = step_breakdown(x, y, info, args, args.breakdown) if args.breakdown else None
    if breakdown:
        print(
            f"[{name}] one model, one thread: {breakdown['epoch_ms']:.0f} ms per epoch, "
            f"convolutions alone {breakdown['convolutions_alone_ms']:.0f} ms "
            f"({100 * breakdown['convolution_share']:.0f} %)",
            flush=True,
        )
    return {
        "train_images": len(train),
        "image_shape": list(info.shape),
        "synthetic_images": len(x),
        "dsa_strategy": strategy,
        "train_gflop_per_image_step": flops_img / 1e9,
        "gemm_rate_note": (
            "one single-threaded 1024x1024 GEMM per thread at once, summed; measured before "
            "and after every round, so under the same load as the training"
        ),
        "fp32_gemm_gflops_median": peak,
        "fp32_gemm_gflops": sgemm,
        "bf16_gemm_gflops_median": bpeak,
        "bf16_gemm_gflops": bgemm,
        "conv_rate_note": (
            "the ConvNet's dominant layer alone (3x3 128->128 on 16x16 maps, batch 32, forward), "
            "one single-threaded convolution per thread at once, summed, measured with the GEMMs; "
            "the best rate is the higher of the two (MKL's GEMM does not use every vector unit on "
            "AMD CPUs, oneDNN's convolution does)"
        ),
        "fp32_conv_gflops_median": statistics.median(sconv),
        "fp32_conv_gflops": sconv,
        "bf16_conv_gflops_median": statistics.median(bconv),
        "bf16_conv_gflops": bconv,
        "fp32_best_gflops": best,
        "bf16_best_gflops": bbest,
        "accuracy_note": (
            "test_accuracy_last_round is after a few epochs, for sanity only; the reference "
            "runs epochs + 1 epochs and drops the lr after epoch epochs // 2 + 1, ours after "
            "epochs // 2, so at tiny budgets its models are further along"
        ),
        "test_images": len(test_cut),
        "results": results,
        "throughput_ratio_ours_over_reference": ratios,
        "target_m16": TARGET_M16,
        "target_m16_met": ratios.get("ours-M16", 0.0) >= TARGET_M16 if 16 in args.models else None,
        "bf16_accuracy_effect": bf16_effect,
        "step_breakdown": breakdown,
    }


def plot(out: dict, path: Path) -> Path:
    """Bars of ours / reference throughput per dataset and configuration, the target marked."""
    from fedistill.plots import pyplot

    plt = pyplot()
    names = list(out["datasets"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        ratios = out["datasets"][name]["throughput_ratio_ours_over_reference"]
        keys = list(ratios)
        ax.bar(range(len(keys)), [ratios[k] for k in keys], color="tab:blue")
        ax.axhline(1.0, color="grey", lw=1)
        ax.axhline(TARGET_M16, color="tab:red", ls="--", lw=1, label=f"target {TARGET_M16}x (M=16)")
        ax.set_xticks(range(len(keys)), [k.replace("ours-", "") for k in keys])
        ax.set_ylabel("model-epochs/s, ours / reference")
        ax.set_title(f"{name} (load {out['load_average']['before'][0]:.1f} on 2 cores)")
        ax.legend(fontsize=8)
    fig.suptitle(out["machine"].get("cpu_model", ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, default=DEFAULT_MNIST)
    p.add_argument("--datasets", default="digits,mnist", help="comma-separated: digits, mnist")
    p.add_argument("--epochs", type=int, default=4, help="per model (the reference runs + 1)")
    p.add_argument("--rounds", type=int, default=2, help="timed interleaved rounds")
    p.add_argument("--models", default="1,4,16", help="our M values")
    p.add_argument("--reference-models", type=int, default=2, help="reference models per round")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-chunk", action="store_true", help="ours on whole batches")
    p.add_argument("--bf16", action="store_true", help="also time ours at the largest M in bf16")
    p.add_argument(
        "--unfused",
        action="store_true",
        help="also time ours at the largest M through the plain modules (train_many(fast=False)),"
        " so the fused ConvNet block's gain is measured in the same rounds",
    )
    p.add_argument(
        "--accuracy-epochs",
        type=int,
        default=0,
        help="also train --accuracy-models models in fp32 and in bf16 for this many epochs "
        "(same seeds, untimed) and report their test accuracies",
    )
    p.add_argument("--accuracy-models", type=int, default=4)
    p.add_argument(
        "--breakdown",
        type=int,
        default=0,
        metavar="EPOCHS",
        help="also time one model alone on one thread for this many epochs against its "
        "convolutions alone at the same shapes (the share any faster non-conv code is bounded by)",
    )
    p.add_argument("--out", type=Path, default=RESULTS / "bench_eval_speed.json")
    args = p.parse_args(argv)
    args.models = [int(m) for m in args.models.split(",") if m]
    command = command_line()

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    datasets = {}
    for name in [d for d in args.datasets.split(",") if d]:
        if name == "digits":
            train, test = load_dataset("digits", train=True), load_dataset("digits", train=False)
        elif name == "mnist":
            if not (args.data_root / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
                print(f"[mnist] skipped: no MNIST subset under {args.data_root}")
                continue
            train = load_dataset("mnist", args.data_root, train=True)
            test = load_dataset("mnist", args.data_root, train=False)
        else:
            p.error(f"unknown dataset {name}")
        datasets[name] = run_dataset(name, train, test, args)
    out = {
        "benchmark": "evaluation throughput: multi-model trainer vs the reference evaluate_synset",
        "command": command,
        "settings": {
            "model": f"ConvNet-{args.width}-{args.depth}, instance norm, reference geometry",
            "ipc": args.ipc,
            "set": "random real images (distill('random'))",
            "epochs": args.epochs,
            "rounds": args.rounds,
            "our_models": args.models,
            "reference_models_per_round": args.reference_models,
            "batch_size": 256,
            "dsa": True,
            "threads": args.threads,
            "interleaved": True,
            "precision": "fp32" + (" (and bf16 autocast where named)" if args.bf16 else ""),
            "our_chunk": "whole batches" if args.no_chunk else "auto_chunk (evaluate's default)",
        },
        "machine": machine(),
        "shared_machine": True,
        "note": (
            "measured on a machine shared with other jobs (see load_average): absolute rates "
            "are depressed and noisy; the ratios come from interleaved rounds in one process"
        ),
        "datasets": datasets,
        "peak_rss_mib_end": peak_rss_mib(),
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "wall_seconds": time.perf_counter() - t_start,
    }
    write_json(args.out, out)
    plot(out, args.out.with_suffix(".png"))
    print(f"\ncommand: {command}")
    for name, d in datasets.items():
        for k, v in d["results"].items():
            print(
                f"[{name}] {k:>10}: {v['model_epochs_per_second']:.2f} model-epochs/s, "
                f"{v['achieved_gflops']:.1f} GFLOP/s ({100 * v['fraction_of_best_rate']:.0f}% "
                f"of the best kernel rate, fp32 {d['fp32_best_gflops']:.0f}), acc "
                f"{statistics.fmean(v['test_accuracy_last_round']):.3f}"
            )
        ratio = ", ".join(
            f"{k} {v:.2f}x" for k, v in d["throughput_ratio_ours_over_reference"].items()
        )
        print(f"[{name}] ours / reference: {ratio}; target M16 >= {TARGET_M16}x met: "
              f"{d['target_m16_met']}")  # fmt: skip
    print(f"load: {out['load_average']}  wrote {args.out}")
    return 0 if math.isfinite(out["wall_seconds"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
