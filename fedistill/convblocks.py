"""The ConvNet's blocks, recognised and computed fast for training.

A ConvNet block is ``Conv2d → instance norm (or none) → ReLU → [AvgPool2d(2)]``.
:func:`plan` recognises a network built of such blocks; :func:`training_forward` returns a
function computing the network's logits through :func:`norm_relu_pool`, which trains the same
network as ``model(x)`` — the same outputs and the same gradients, bit for bit
(``tests/fedistill/test_convblocks.py``) — in less time on a CPU.

**Where the time went.** Training ConvNet-128-3 on MNIST-sized images on one thread (chunks of
10 images, reference geometry: the first block's map is 128 × 32 × 32 per image), about half of
a step was the convolutions and most of the rest the memory-bound layers after them: the
norm's backward, ``avg_pool2d`` forward and backward (whose NCHW kernels read a 2 × 2 window
element by element, and whose backward first zero-fills its output), and the ReLU's backward
over the full map. Measured here on one thread, 10 × 128 × 32 × 32: ``avg_pool2d`` 1.9 ms
against 0.6 ms for the same sums as strided adds.

**What :func:`norm_relu_pool` does instead** (one autograd node per block):

- forward: the norm by ``torch.native_group_norm`` (one group per channel; it also returns the
  statistics the backward needs), the ReLU in place, and the pooling as three strided adds in
  ``avg_pool2d``'s own order (``((x₀₀ + x₀₁) + x₁₀) + x₁₁``, then ÷ 4), so the output is
  bit-identical to ``avg_pool2d(relu(group_norm(z)))``;
- backward: a quarter of each output's gradient is spread over its window and masked by the
  ReLU in one ``threshold_backward`` whose gradient operand is a broadcast view (each pooled row
  repeated twice, only columns materialised), then the norm's own
  ``native_group_norm_backward``. The gradient equals autograd's through the three modules bit
  for bit: the same kernels on the same values, without the zero fill and the full-size pooled
  gradient.

**Measured** (one thread, ConvNet-128-3, a random IPC-10 set of the MNIST subset, DSA, chunks
of 10, interleaved, AMD EPYC): 1.19× the steps per second of ``model(x)``; two workers training
six models at once, 1.13–1.25×. (On random normal images instead of real ones the modules are
slower and the gain looks larger, 1.3–2×: measure on real data.) Computing the first block from
its input patches, as DM's frozen path does, was tried and dropped: no faster on real images.

The backward is not differentiable again: asking for a gradient with ``create_graph=True``
through the block raises (a silent first-order answer would be wrong); second-order uses (DC's
synthetic gradient, which keeps its graph) take the network's own forward.

Under ``torch.autocast`` on the CPU the block does what the modules do: a bf16 convolution
output is normalised by the mixed-precision norm kernel (float32 scale and shift) into bf16,
and the pooling sums in float32 and rounds once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class Block:
    """One ConvNet block: its convolution, its norm (``None``: no norm), and whether a 2×2
    average pooling follows the ReLU."""

    conv: nn.Conv2d
    norm: nn.GroupNorm | None  # instance norm (one group per channel), or no norm
    pool: bool  # AvgPool2d(2, 2) after the ReLU


def is_instance_norm(m: nn.Module) -> bool:
    """GroupNorm with one group per channel and an affine map (the ConvNet's instance norm)."""
    return isinstance(m, nn.GroupNorm) and m.num_groups == m.num_channels and m.affine


def _is_plain_conv(m: nn.Module) -> bool:
    return (
        isinstance(m, nn.Conv2d)
        and m.stride == (1, 1)
        and m.dilation == (1, 1)
        and m.groups == 1
        and m.padding_mode == "zeros"
        and isinstance(m.padding, tuple)
    )


def is_pool2(m: nn.Module) -> bool:
    """A plain 2×2, stride-2 average pooling (what the fast paths fuse)."""
    return (
        isinstance(m, nn.AvgPool2d)
        and m.kernel_size in (2, (2, 2))
        and m.stride in (2, (2, 2))
        and m.padding in (0, (0, 0))
        and not m.ceil_mode
        and m.divisor_override is None
    )


def plan(net: nn.Module) -> list[Block] | None:
    """The network's blocks, or ``None`` when it is not a ConvNet of such blocks (with a
    ``features`` sequence and an ``embed``)."""
    features = getattr(net, "features", None)
    if not isinstance(features, nn.Sequential) or not hasattr(net, "embed"):
        return None
    mods = list(features)
    blocks: list[Block] = []
    i = 0
    while i < len(mods):
        if i + 2 >= len(mods) or not _is_plain_conv(mods[i]):
            return None
        conv, norm, act = mods[i], mods[i + 1], mods[i + 2]
        if type(act) is not nn.ReLU:
            return None
        if is_instance_norm(norm):
            kept: nn.GroupNorm | None = norm  # type: ignore[assignment]
        elif type(norm) is nn.Identity:
            kept = None
        else:
            return None
        i += 3
        pool = i < len(mods) and is_pool2(mods[i])
        if pool:
            i += 1
        blocks.append(Block(conv, kept, pool))  # type: ignore[arg-type]
    return blocks or None


# --------------------------------------------------------------------------- the kernels


def avg_pool2(h: Tensor) -> Tensor:
    """``F.avg_pool2d(h, 2)`` (floor mode), bit for bit, as three strided adds (summed in
    float32 for a 16-bit ``h``, as the kernel does)."""
    ho, wo = h.shape[-2] // 2, h.shape[-1] // 2
    rows0, rows1 = slice(0, 2 * ho, 2), slice(1, 2 * ho, 2)
    cols0, cols1 = slice(0, 2 * wo, 2), slice(1, 2 * wo, 2)
    acc = torch.float32 if h.dtype in (torch.bfloat16, torch.float16) else h.dtype
    out = h[..., rows0, cols0].to(acc) + h[..., rows0, cols1]
    out += h[..., rows1, cols0]
    out += h[..., rows1, cols1]
    return out.div_(4).to(h.dtype)


# Map width up to which :func:`_unpool_relu` materialises the spread gradient: with rows this
# short, the broadcast view's inner loops are too short to vectorise (measured here, one thread,
# 128 channels: 8 × 8 maps 2.6–3× faster materialised, 16 × 16 1.6× slower).
SMALL_MAP = 8


def _unpool_relu(g: Tensor, h: Tensor) -> Tensor:
    """The gradient at the ReLU's input of ``avg_pool2(relu(·))``: ``g / 4`` over each 2×2
    window, zero where the ReLU's output ``h`` is zero (and on a trailing odd row/column)."""
    n, c, height, width = h.shape
    ho, wo = g.shape[-2:]
    m = n * c
    if (height, width) == (2 * ho, 2 * wo) and width <= SMALL_MAP:
        # short rows: materialise the whole spread gradient, then one contiguous pass
        spread = (g.reshape(m, ho, 1, wo, 1) * 0.25).expand(m, ho, 2, wo, 2).reshape(h.shape)
        return torch.ops.aten.threshold_backward(spread, h, 0)
    # each pooled gradient twice along the row (materialised), each row twice by a view
    quarter = (g.reshape(m, ho, wo, 1) * 0.25).expand(m, ho, wo, 2).reshape(m, ho, 1, 2 * wo)
    if (height, width) == (2 * ho, 2 * wo):
        hv = h.view(m, ho, 2, width)
        return torch.ops.aten.threshold_backward(quarter.expand_as(hv), hv, 0).view_as(h)
    out = h.new_zeros(h.shape)
    hv = h[:, :, : 2 * ho, : 2 * wo].reshape(m, ho, 2, 2 * wo)
    inner = torch.ops.aten.threshold_backward(quarter.expand_as(hv), hv, 0)
    out[:, :, : 2 * ho, : 2 * wo] = inner.view(n, c, 2 * ho, 2 * wo)
    return out


class _NormReluPool(torch.autograd.Function):
    """``[avg_pool2](relu(instance_norm(z)))``; ``weight is None``: no norm."""

    @staticmethod
    def forward(
        ctx: Any, z: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, pool: bool
    ) -> Tensor:
        z = z.contiguous()
        stats: tuple[Tensor, ...] = ()
        if weight is None:
            h = torch.relu(z)
        else:
            n, c, height, width = z.shape
            h, mean, rstd = torch.native_group_norm(z, weight, bias, n, c, height * width, c, eps)
            h.relu_()
            stats = (z, mean, rstd, weight)
        ctx.save_for_backward(h, *stats)
        ctx.pool = pool
        return avg_pool2(h) if pool else h

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():  # create_graph=True: the ops below would not record it
            raise RuntimeError(
                "the fused ConvNet block has no second-order gradient; "
                "compute this one through the network's own forward"
            )
        h, *stats = ctx.saved_tensors
        if ctx.pool:
            gv = _unpool_relu(g, h)
        else:
            gv = torch.ops.aten.threshold_backward(g.contiguous(), h, 0)
        if not stats:
            return gv, None, None, None, None
        z, mean, rstd, weight = stats
        n, c, height, width = z.shape
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        gz, gw, gb = torch.ops.aten.native_group_norm_backward(
            gv, z, mean, rstd, weight, n, c, height * width, c, mask
        )
        return gz, gw, gb, None, None


def norm_relu_pool(z: Tensor, norm: nn.GroupNorm | None, pool: bool) -> Tensor:
    """``[avg_pool2d](relu(norm(z)))`` for an instance norm (or none), as one autograd node
    (see the module docstring); equal to the three modules bit for bit."""
    if norm is None:
        return _NormReluPool.apply(z, None, None, 0.0, pool)
    return _NormReluPool.apply(z, norm.weight, norm.bias, norm.eps, pool)


def embedding(blocks: list[Block], x: Tensor) -> Tensor:
    """``net.embed(x)`` for a ConvNet whose blocks are ``blocks``, through
    :func:`norm_relu_pool`."""
    h = x
    for b in blocks:
        conv = b.conv
        h = F.conv2d(h, conv.weight, conv.bias, padding=conv.padding)
        h = norm_relu_pool(h, b.norm, b.pool)
    return h.flatten(1)


def logits(net: nn.Module, blocks: list[Block], x: Tensor) -> Tensor:
    """``net(x)`` for a ConvNet whose blocks are ``blocks``, through :func:`norm_relu_pool`."""
    return net.classifier(embedding(blocks, x))


def _has_hooks(net: nn.Module) -> bool:
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
        for m in net.modules()
    )


def _fused_plan(net: nn.Module) -> list[Block] | None:
    """The blocks of a :class:`~fedistill.models.ConvNet` of plain blocks with its own
    ``forward`` and ``embed`` and no hooks on its modules; ``None`` for any other network."""
    from fedistill.models import ConvNet

    own = type(net).forward is ConvNet.forward and type(net).embed is ConvNet.embed
    blocks = plan(net) if isinstance(net, ConvNet) and own else None
    if blocks is None or _has_hooks(net):
        return None
    return blocks


def training_forward(net: nn.Module) -> Callable[[Tensor], Tensor]:
    """A function computing ``net(x)`` for training: through :func:`logits` for a
    :class:`~fedistill.models.ConvNet` of plain blocks (its own ``forward``, no hooks on its
    modules), ``net`` itself otherwise."""
    blocks = _fused_plan(net)
    if blocks is None:
        return net
    return lambda x: logits(net, blocks, x)


def training_embed(net: nn.Module) -> Callable[[Tensor], Tensor]:
    """A function computing ``net.embed(x)`` with first-order gradients: through
    :func:`embedding` where :func:`training_forward` would fuse, ``net.embed`` otherwise."""
    blocks = _fused_plan(net)
    if blocks is None:
        return net.embed
    return lambda x: embedding(blocks, x)
