"""A fast, inference-only forward of the frozen ConvNet embedding (DM's real branch).

Distribution matching spends nearly all of its time embedding the real batch (256 images per
class through a freshly initialised, frozen ConvNet). That branch needs no gradients, so it can
be computed differently from :meth:`fedistill.models.ConvNet.embed` as long as the numbers are
the same to float rounding. :func:`frozen_embed` does four things:

1. **Channels-last memory and small chunks.** Convolutions run on NHWC tensors (oneDNN's fast
   layout) over chunks of ``chunk`` images, so each block's large activation stays in cache
   (the first block's, the largest, over ``FIRST_BLOCK_CHUNK`` images at a time).
2. **Chunks in parallel, each single-threaded.** With ``workers > 1`` the chunks are embedded
   by ``workers − 1`` background threads, each running torch with one intra-op thread, and by
   the caller, which takes the chunks none has started once it asks for the result (so it can
   do other work first, and never waits idle while chunks are left). There is no
   OpenMP barrier between the threads — on a shared, busy machine a two-thread parallel region
   waits for the slower thread at every one of the forward's thousands of operations (measured
   here: 43–76 s against 7–10 s for the same 2,560 images at load 12–15 on 2 cores) — and each
   thread's chunk stays in its core's cache. A chunk's result does not depend on ``workers``.
3. **Instance norm + ReLU + average pooling fused by algebra.** For one image and channel, the
   block computes ``pool(relu(a·(z − μ) + β))`` with ``a = γ/σ`` (``z`` the conv output
   without bias, which instance norm cancels; ``μ, σ`` its spatial mean and standard
   deviation). When ``a > 0`` (always for a freshly initialised net, γ = 1),
   ``relu(a·(z − μ) + β) = a·(max(z, μ − β/a) − μ) + β``, and pooling is linear, so the block
   is one in-place ``clamp`` over the big map, the pooling, and an affine map of the 4× smaller
   pooled map — instead of GroupNorm's passes, a separate ReLU and the pooling. A block with a
   channel of ``a ≤ 0`` (possible in a trained model) takes the plain ``relu(a·(z − μ) + β)``.
4. **First-layer statistics without touching its output.** The first convolution is linear in
   few inputs (``C_in·k·k`` values per position, 9 for MNIST), so each image's per-channel mean
   and variance follow from the mean and covariance of its input patches,
   ``μ_c = w_cᵀ m`` and ``σ²_c = w_cᵀ Σ w_c`` (Σ from the centred patches). The largest activation
   of the network (``width`` × 28 × 28 per MNIST image, × 32 × 32 in the reference geometry)
   is then read only by the clamp and the pool.

5. **Optional bf16 (``precision="bf16"``).** The convolutions of the deeper blocks — nearly all
   of the forward's multiply-adds (for ConvNet-128-3 on 28 px, block 2 alone is ~75 %) — run on
   bfloat16 copies of their input and weights (oneDNN's bf16 kernels on CPUs with AVX-512 BF16
   or AMX: 1.8–1.9× a float32 block-2 convolution on one AMD EPYC core, measured here); their
   output, the statistics, the clamp and the pooling stay float32, and so does the first
   block, whose statistics come from the float32 input patches. Not equal to float32:
   ``experiments/bench_dm_speed.py`` states its speed and its effect on the set's accuracy.

Both ConvNet geometries (:data:`fedistill.models.GEOMETRIES`) are handled: each convolution's
own padding is used, and the padded border's zero patches count in the first layer's statistics
as they do in instance norm (``tests/fedistill/test_fast_convnet_geometry.py``).

Deeper blocks compute their statistics from the conv output with one sum / sum-of-squares pass
(falling back to a two-pass variance for a channel whose mean dwarfs its spread, where that
formula would cancel).

Only ConvNets built from ``Conv2d → (instance norm | none) → ReLU → [AvgPool2d(2)]`` blocks are
handled; :func:`supports` says whether a network is, and :func:`frozen_embed` falls back to the
network's own ``embed`` otherwise (batch norm, group norm with fewer groups, other models).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedistill.convblocks import Block, plan

# First-layer statistics come from the input patches when a patch has at most this many values.
ANALYTIC_PATCH_MAX = 64
# Default chunk of images per pass: big enough for efficient convolutions, small enough that the
# deeper blocks' maps stay in cache.
DEFAULT_CHUNK = 32
# The first block's map (width × 32 × 32 floats per MNIST image in the reference geometry, 8 MiB
# for 16 images at width 128) is computed over at most this many images at a time.
FIRST_BLOCK_CHUNK = 16
# A channel whose squared mean exceeds this multiple of its variance gets a two-pass variance.
_CANCEL_RATIO = 1e2


def supports(net: nn.Module) -> bool:
    """True when :func:`frozen_embed` takes the fast path for ``net``."""
    return plan(net) is not None


PRECISIONS = ("fp32", "bf16")


def frozen_embed(
    net: nn.Module,
    x: Tensor,
    chunk: int = DEFAULT_CHUNK,
    *,
    workers: int = 1,
    precision: str = "fp32",
) -> Tensor:
    """``net.embed(x)`` without gradients, computed fast (see the module docstring).

    Equal to ``net.embed(x)`` up to float rounding for the supported ConvNets; other networks
    are embedded by their own ``embed`` (under ``torch.no_grad``). ``workers > 1`` embeds
    chunks concurrently on that many single-threaded workers; the result is the same.
    ``precision="bf16"``: the deeper blocks' convolutions in bfloat16 (item 5 above)."""
    return start_frozen_embed(net, x, chunk, workers=workers, precision=precision)()


def start_frozen_embed(
    net: nn.Module,
    x: Tensor,
    chunk: int = DEFAULT_CHUNK,
    *,
    workers: int = 1,
    precision: str = "fp32",
) -> Callable[[], Tensor]:
    """Start :func:`frozen_embed`; returns a function that waits for and returns the result.

    With ``workers > 1`` the chunks run on background threads, so the caller can do other
    work (DM computes its synthetic branch) before asking for the result."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    bf16 = precision == "bf16"
    blocks = plan(net)
    if blocks is None or x.shape[0] == 0:
        with torch.no_grad():
            out = net.embed(x)
        return lambda: out
    pieces = [x[i : i + chunk] for i in range(0, x.shape[0], chunk)]
    if workers <= 1 or len(pieces) == 1:
        # one intra-op thread here too: a chunk's numbers never depend on the thread count
        with single_threaded(), torch.no_grad():
            out = torch.cat([_forward(blocks, p, bf16) for p in pieces])
        return lambda: out
    threads = torch.get_num_threads()
    pool = _pool(workers - 1)  # the caller is the last worker, once it asks for the result
    futures = [pool.submit(_forward_single_threaded, blocks, p, bf16) for p in pieces]

    def result() -> Tensor:
        # the caller takes the chunks no background worker has started, last first, so no
        # more than ``workers`` threads ever compute and none waits while chunks are left
        own: dict[int, Tensor] = {}
        with single_threaded(), torch.no_grad():
            for i in reversed(range(len(pieces))):
                if futures[i].cancel():
                    own[i] = _forward(blocks, pieces[i], bf16)
        out = torch.cat([own[i] if i in own else f.result() for i, f in enumerate(futures)])
        torch.set_num_threads(threads)  # the workers' setting also reaches MKL's global one
        return out

    return result


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch with one intra-op thread in this block (restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    with _POOLS_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="fedistill-embed")
        return _POOLS[workers]


def _forward_single_threaded(blocks: list[Block], x: Tensor, bf16: bool = False) -> Tensor:
    # intra-op threads are per OS thread under OpenMP: this worker computes on one core
    # (asking first makes torch initialise this thread's setting, so it is not reset later)
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    with torch.no_grad():
        return _forward(blocks, x, bf16)


# --------------------------------------------------------------------------- the blocks


def _channels_last(h: Tensor) -> Tensor:
    if h.shape[1] == 1:
        # A single-channel tensor counts as both layouts; give it channels-last strides
        # explicitly so the convolution picks its NHWC kernel and writes an NHWC output.
        hh, ww = h.shape[2:]
        out = torch.empty_strided(h.shape, (hh * ww, 1, ww, 1), dtype=h.dtype, device=h.device)
        return out.copy_(h)
    return h.contiguous(memory_format=torch.channels_last)


def _forward(blocks: list[Block], x: Tensor, bf16: bool = False) -> Tensor:
    h = _channels_last(x)
    # the first block's map, the largest, over fewer images at a time (2 % faster per DM
    # iteration than whole chunks, interleaved in one process on an AMD EPYC)
    step = FIRST_BLOCK_CHUNK
    h = torch.cat([_block(blocks[0], h[i : i + step], bf16) for i in range(0, h.shape[0], step)])
    for b in blocks[1:]:
        h = _block(b, h, bf16)
    return h.flatten(1)


def _conv(h: Tensor, conv: nn.Conv2d, bias: Tensor | None, bf16: bool) -> Tensor:
    if not bf16:
        return F.conv2d(h, conv.weight, bias, padding=conv.padding)
    low = torch.bfloat16
    b = None if bias is None else bias.to(low)
    return F.conv2d(h.to(low), conv.weight.to(low), b, padding=conv.padding).float()


def _block(b: Block, h: Tensor, bf16: bool = False) -> Tensor:
    conv = b.conv
    if b.norm is None:
        z = _conv(h, conv, conv.bias, bf16).relu_()
        return F.avg_pool2d(z, 2) if b.pool else z
    patch = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    if patch <= ANALYTIC_PATCH_MAX:
        mean, var = _patch_stats(h, conv)
        z = F.conv2d(h, conv.weight, None, padding=conv.padding)
    else:
        z = _conv(h, conv, None, bf16)
        mean, var = _spatial_stats(z)
    n, c = mean.shape
    a = (b.norm.weight / torch.sqrt(var + b.norm.eps)).view(n, c, 1, 1)
    mu, beta = mean.view(n, c, 1, 1), b.norm.bias.view(1, c, 1, 1)
    if bool((a > 0).all()):
        # relu(a (z − μ) + β) = a · (max(z, μ − β/a) − μ) + β: one clamp over the big map
        z.clamp_min_(mu - beta / a)
        out = F.avg_pool2d(z, 2) if b.pool else z
        return out.sub_(mu).mul_(a).add_(beta)
    z.sub_(mu).mul_(a).add_(beta).relu_()
    return F.avg_pool2d(z, 2) if b.pool else z


def _patch_stats(h: Tensor, conv: nn.Conv2d) -> tuple[Tensor, Tensor]:
    """Per image and output channel: mean and variance over positions of ``conv(h)`` without
    bias, from the mean and covariance of the input patches (the covariance from centred
    patches: two passes, no cancellation)."""
    p = F.unfold(h, conv.kernel_size, padding=conv.padding)  # n × K × L
    m = p.mean(-1, keepdim=True)  # n × K × 1
    p = p - m
    cov = p @ p.transpose(1, 2) / p.shape[-1]  # n × K × K
    w = conv.weight.reshape(conv.out_channels, -1).t()  # K × C
    mean = m.squeeze(-1) @ w
    var = ((cov @ w) * w).sum(1).clamp_min_(0)
    return mean, var


def _spatial_stats(z: Tensor) -> tuple[Tensor, Tensor]:
    """Per image and channel: mean and (biased) variance over positions of an NHWC map."""
    n, c = z.shape[:2]
    v = z.permute(0, 2, 3, 1).reshape(n, -1, c)  # a view for channels-last z
    mean = v.mean(1)
    var = (v * v).mean(1) - mean * mean
    if bool((mean * mean > _CANCEL_RATIO * var).any()):
        var = torch.var(v, dim=1, correction=0)
    return mean, var.clamp_min_(0)
