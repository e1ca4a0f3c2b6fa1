"""``dc`` and ``dsa``: dataset condensation by gradient matching.

DC — Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching", ICLR 2021.
DSA — Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation", ICML 2021:
the same algorithm, with one random augmentation drawn per class and applied identically
("siamese") to that class's real and synthetic batch, and to the network's inner training.

Algorithm (what :func:`condense` runs; ``K`` outer iterations, schedule ``(outer, inner)``)::

    S ← ipc real images (or noise) per present class           # init
    for k = 1 … K:                                             # outer iterations
        θ ← a freshly initialised ConvNet
        for t = 1 … outer:
            for each present class c:
                B_c ← batch_real real images of class c;  S_c ← the synthetic images of c
                (DSA: one draw ω; B_c ← A_ω(B_c), S_c ← A_ω(S_c))
                g_real ← ∇_θ ℓ(θ; B_c)                              # no graph kept
                g_syn  ← ∇_θ ℓ(θ; S_c)                              # create_graph
            L ← Σ_c D(g_syn, g_real)                            # layer-wise distance
            S ← SGD(momentum 0.5, lr_img) step on ∇_S L         # (and the label logits)
            if t < outer: train θ for `inner` epochs on S (SGD, lr_net; DSA: augmented)
    return S

``D`` is the reference's layer-wise distance ("ours"): for every weight tensor, flattened to
one row per output unit, Σ_rows (1 − cos(g_syn row, g_real row)); one-dimensional parameters
(biases, norm scales) contribute nothing, exactly as in the reference, so their gradients are
never computed.

The ``(outer, inner)`` schedule follows the reference's ``get_loops``: IPC 1 → (1, 1), 10 →
(10, 50), 20 → (20, 25), 30 → (30, 20), 40 → (40, 15), 50 → (50, 10). Other IPCs (the reference
refuses them) take ``outer = ipc`` and the inner count of the nearest tabulated IPC ≥ 10.

The network is the literature's ConvNet-128-3 (instance norm); on images under 16 px (8×8
digits) ``depth`` defaults to 2, because a third block would instance-normalise 2×2 maps and
make the gradients too erratic to match. The inner training uses plain SGD (``lr_net``), as the
reference's current ``main.py``.

**Soft labels** (``learn_labels``): every synthetic image gets learnable label logits,
initialised to ``label_init`` × one-hot of its class; the synthetic branch's loss uses their
softmax as soft targets, so the matching loss optimises labels and images jointly (SGD,
momentum 0.5, ``lr_label``); the inner training uses them too. The set stores the softmax rows
(N×K float32, label kind "soft"). Matching gradients of hard-labelled real batches tends to
sharpen the labels (digits IPC 1: max probability 0.94 → 0.99 in 25 iterations).

**CPU cost.** One outer iteration costs ``outer`` matching steps (``classes × batch_real``
real images forward and backward, plus the small synthetic double backward) and
``(outer − 1) × inner`` epochs of training on the synthetic set. Nothing is computed that the
loss does not use: the real branch keeps no graph past its gradient, 1-D parameters are left
out, and the image step differentiates the loss in S only (no second-order gradients for θ).
Real and inner-loop gradients are computed in pieces of :data:`CHUNK` images, each on one
thread, summed in a fixed order (:class:`ChunkedGradients`): the pieces of all classes run on
``torch.get_num_threads()`` workers without OpenMP barriers, small pieces are served from the
heap instead of fresh kernel pages, and the set does not depend on the thread count.
A plain ConvNet's pieces run through :func:`fast_logits` — the same network with the first
convolution as a matrix product over unfolded patches and 2×2 pooling as strided adds, the two
layers whose oneDNN/NCHW kernels were slowest — equal to ``net(x)`` up to float rounding
(``tests/fedistill/test_dc_fast.py``); measured on one thread at load 12–16 (noisy), CPU
seconds for one class's 256 real images 0.74 → 0.64, for one inner step on 100 images
0.289 → 0.278. ``experiments/bench_dc_speed.py`` times the CLI against the official ``main.py``.

Measured on mnist-subset, CPU seconds per outer iteration on one thread (a busy shared
2-core machine, so ± 10 %): IPC 1 ≈ 3.9 s (7.5 s at ``batch_real=256``; the same algorithm
with whole per-class batches, as the reference computes them, 5.9 s and 11.4 s); IPC 10
≈ 187 s (224 s at 256; whole batches 212 s and 272 s), of which the 450 inner epochs are
≈ 140 s. The defaults keep the reference's loss, schedule, learning rates and optimisers and
change only the budget: ``iterations=100`` (reference 1,000) and ``batch_real=128``
(reference 256); ``iterations=1000, batch_real=256`` is the reference's budget. With the
defaults, DC at IPC 1 on mnist-subset (412 CPU-seconds) reaches 85.5 ± 0.7 % against 65.8 ± 2.5 %
for ``random`` (``fedistill evaluate --epochs 300 --models 3``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedistill.augment import DSA, default_strategy, parse_strategy
from fedistill.convblocks import Block, plan
from fedistill.data import LabeledImages
from fedistill.distill import register
from fedistill.distill._common import (
    INITS,
    class_batch,
    init_images,
    make_set,
    new_seed,
    present_classes,
    seeded,
)
from fedistill.distill._fast_convnet import single_threaded
from fedistill.errors import ConfigError
from fedistill.models import MODELS, NORMS, ConvNet, build_model
from fedistill.progress import progress_bar
from fedistill.synthetic import SyntheticSet

log = logging.getLogger(__name__)

# The reference's get_loops(ipc): (outer_loop, inner_loop).
REFERENCE_LOOPS: dict[int, tuple[int, int]] = {
    1: (1, 1),
    10: (10, 50),
    20: (20, 25),
    30: (30, 20),
    40: (40, 15),
    50: (50, 10),
}


def get_loops(ipc: int) -> tuple[int, int]:
    """The reference's ``(outer_loop, inner_loop)`` for ``ipc``; for an IPC it does not list,
    ``outer = ipc`` and the inner count of the nearest listed IPC ≥ 10."""
    if ipc in REFERENCE_LOOPS:
        return REFERENCE_LOOPS[ipc]
    nearest = min((k for k in REFERENCE_LOOPS if k >= 10), key=lambda k: (abs(k - ipc), k))
    return ipc, REFERENCE_LOOPS[nearest][1]


@dataclass
class DCConfig:
    """Hyper-parameters of DC (``dsa=False``) and DSA (``dsa=True``); reference values unless
    noted. ``iterations`` and ``batch_real`` are a CPU budget (reference: 1000 and 256)."""

    iterations: int = 100  # outer iterations, each with a fresh network (reference: 1000)
    outer_loop: int | None = None  # None: get_loops(ipc)
    inner_loop: int | None = None  # None: get_loops(ipc)
    lr_img: float = 0.1
    lr_net: float = 0.01
    batch_real: int = 128  # real images per class per matching step (reference: 256)
    batch_train: int = 256  # batch size of the inner network training on the synthetic set
    init: str = "real"  # "real" or "noise" (the reference reports both perform alike)
    model: str = "convnet"
    width: int = 128
    depth: int | None = None  # None: 3 (ConvNet-3), or 2 for images under 16 px (see net_depth)
    norm: str = "instance"
    dsa: bool = False
    dsa_strategy: str | None = None  # None: default_strategy(dataset) (no flips for digits)
    learn_labels: bool = False  # learn soft labels jointly with the images
    lr_label: float = 5.0
    label_init: float = 5.0  # initial label logits: label_init × one-hot

    def validate(self) -> None:
        if self.iterations < 1:
            raise ConfigError(f"iterations must be ≥ 1, got {self.iterations}")
        for name in ("outer_loop", "inner_loop"):
            v = getattr(self, name)
            if v is not None and v < (1 if name == "outer_loop" else 0):
                raise ConfigError(f"{name} must be ≥ {1 if name == 'outer_loop' else 0}, got {v}")
        for name in ("lr_img", "lr_net", "lr_label"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.batch_real < 1 or self.batch_train < 1:
            raise ConfigError("batch_real and batch_train must be ≥ 1")
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {INITS}, got '{self.init}'")
        if self.model not in MODELS:
            raise ConfigError(f"model must be one of {MODELS}, got '{self.model}'")
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {NORMS}, got '{self.norm}'")
        if self.width < 1 or (self.depth is not None and self.depth < 1):
            raise ConfigError("width and depth must be ≥ 1")
        if self.dsa_strategy is not None:
            try:
                parse_strategy(self.dsa_strategy)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None

    def net_depth(self, height: int, width: int) -> int:
        """``depth``, or by default the literature's 3 — but 2 for images under 16 px: on 8×8
        digits a third block would normalise 2×2 maps per channel, which makes the gradients
        erratic and gradient matching fail."""
        if self.depth is not None:
            return self.depth
        return 3 if min(height, width) >= 16 else 2

    def loops(self, ipc: int) -> tuple[int, int]:
        ref_outer, ref_inner = get_loops(ipc)
        return (
            ref_outer if self.outer_loop is None else self.outer_loop,
            ref_inner if self.inner_loop is None else self.inner_loop,
        )


@dataclass
class DSAConfig(DCConfig):
    """DC with differentiable siamese augmentation on (the only default that differs)."""

    dsa: bool = True


# --------------------------------------------------------------------------- the distance


def layer_distance(g_syn: Tensor, g_real: Tensor) -> Tensor:
    """The reference's per-layer distance: one row per output unit, Σ_rows (1 − cos).
    One-dimensional tensors (biases, norm parameters) give 0, as in the reference."""
    if g_real.ndim == 1:
        return g_real.new_zeros(())
    if g_real.ndim != 2:  # conv out×in×h×w (or out×h×w): flatten to out × rest
        g_syn, g_real = g_syn.flatten(1), g_real.flatten(1)
    dot = (g_syn * g_real).sum(-1)
    norms = g_syn.norm(dim=-1) * g_real.norm(dim=-1)
    return (1 - dot / (norms + 1e-6)).sum()


def match_loss(g_syn: list[Tensor] | tuple[Tensor, ...], g_real: list[Tensor]) -> Tensor:
    """Layer-wise gradient distance summed over the parameter tensors."""
    return torch.stack([layer_distance(s, r) for s, r in zip(g_syn, g_real, strict=True)]).sum()


def matched_parameters(net: nn.Module) -> list[nn.Parameter]:
    """The parameters whose gradients the distance compares (weights with ≥ 2 dimensions)."""
    return [p for p in net.parameters() if p.ndim > 1]


# --------------------------------------------------------------------------- the two branches


def soft_cross_entropy(logits: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy with class ids or probability rows as the target."""
    return F.cross_entropy(logits, target, reduction=reduction)


# --------------------------------------------------------------------------- gradients in chunks

# Images per piece of a batch whose gradient is computed on one thread. Small enough that the
# first block's activation (16 × 128 × 28 × 28 floats, 6.4 MB) is reused from the heap rather
# than mapped afresh by the kernel on every call (a third of the CPU time at 128 images), and
# that the pieces of a batch spread over the workers.
CHUNK = 16


class ChunkedGradients:
    """Mean-loss gradients of a batch as the sum of its fixed pieces' summed-loss gradients.

    Each piece runs on one intra-op thread; with ``workers > 1`` the pieces run concurrently on
    that many threads (no OpenMP barriers between the cores, which on a busy shared machine
    stall every one of the thousands of small operations). Pieces are fixed by ``chunk`` and
    summed in order, so the result does not depend on the number of workers. Valid for networks
    whose samples do not interact (instance norm, or batch norm in eval mode); ``chunk=None``
    takes the batch whole. With ``fast`` (the default), a plain ConvNet's pieces run through
    :func:`fast_logits` (equal to ``net(x)`` up to float rounding); ``fast=False`` runs the
    network's own forward."""

    def __init__(self, workers: int = 1, chunk: int | None = CHUNK, *, fast: bool = True) -> None:
        self.chunk = chunk
        self.fast = fast
        self._pool = ThreadPoolExecutor(workers, "fedistill-dc") if workers > 1 else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def start(
        self, net: nn.Module, params: list[nn.Parameter], x: Tensor, y: Tensor
    ) -> Callable[[], list[Tensor]]:
        """Start ∇ mean CE(net(x), y) w.r.t. ``params``; returns a function that waits for it
        (the caller can compute something else meanwhile)."""
        step = self.chunk or len(x)
        pieces = [(x[i : i + step], y[i : i + step]) for i in range(0, len(x), step)]
        forward = fast_forward(net) if self.fast else None
        forward = forward or net
        if self._pool is None:
            done = [_summed_gradient(forward, params, xc, yc) for xc, yc in pieces]
            jobs: list[Callable[[], tuple[Tensor, ...]]] = [lambda g=g: g for g in done]
        else:
            futures = [
                self._pool.submit(_summed_gradient, forward, params, xc, yc) for xc, yc in pieces
            ]
            jobs = [f.result for f in futures]

        def result() -> list[Tensor]:
            total = list(jobs[0]())
            for job in jobs[1:]:
                for t, g in zip(total, job(), strict=True):
                    t.add_(g)
            return [t.div_(len(x)) for t in total]

        return result


def _summed_gradient(
    forward: Callable[[Tensor], Tensor], params: list[nn.Parameter], x: Tensor, y: Tensor
) -> tuple[Tensor, ...]:
    """∇ Σ CE(forward(x), y) on this thread alone; no graph is kept past the gradient."""
    if torch.get_num_threads() != 1:  # per OS thread under OpenMP
        torch.set_num_threads(1)
    loss = soft_cross_entropy(forward(x), y, reduction="sum")
    return torch.autograd.grad(loss, params)


# --------------------------------------------------------------------------- the fast forward
#
# Where the time goes (torch.profiler, one thread, 16 MNIST images through ConvNet-128-3 forward
# and backward): the convolutions take about 55 %, and nn.AvgPool2d's NCHW kernels about 20 %
# (4.6 ms forward and 5.0 ms backward on a 16×128×28×28 map, against 0.8 ms and 1.2 ms for the
# same sums as strided adds and a repeat). :func:`fast_logits` computes the same network with
# that pooling and an in-place ReLU (neither the norm's nor the convolution's backward keeps its
# output), leaving the convolutions and the norm to their own kernels.


# A convolution with at most this many inputs per output runs as a matrix product (_conv).
SMALL_CONV = 32


class _AvgPool2(torch.autograd.Function):
    """2×2 average pooling, stride 2, floor mode (``nn.AvgPool2d(2)``): the mean of each window
    as two strided adds; the gradient spreads a quarter of each output's gradient over its
    window (a trailing odd row or column gets none, as in the floor mode)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        ctx.size = (h, w)
        x = x[..., : h - h % 2, : w - w % 2]
        rows = x[..., 0::2, :] + x[..., 1::2, :]
        return (rows[..., 0::2] + rows[..., 1::2]).mul_(0.25)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        h, w = ctx.size
        up = (grad * 0.25).repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
        if up.shape[-2:] != (h, w):
            up = F.pad(up, (0, w - up.shape[-1], 0, h - up.shape[-2]))
        return up


def _conv(h: Tensor, conv: nn.Conv2d) -> Tensor:
    """``conv(h)``; a convolution with few inputs per output (the first layer: 9 for MNIST) as
    one batched matrix product over the unfolded patches, which oneDNN's direct kernel runs
    at a few GFLOP/s (10 ms for 16 MNIST images, more than the 128-channel second layer)."""
    kh, kw = conv.kernel_size
    if conv.groups != 1 or conv.in_channels * kh * kw > SMALL_CONV or isinstance(conv.padding, str):
        return F.conv2d(
            h, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups
        )
    n, _, height, width = h.shape
    (ph, pw), (sh, sw), (dh, dw) = conv.padding, conv.stride, conv.dilation
    ho = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    cols = F.unfold(h, (kh, kw), conv.dilation, conv.padding, conv.stride)  # N × C·k·k × L
    weight = conv.weight.flatten(1).expand(n, -1, -1)
    if conv.bias is None:
        out = torch.bmm(weight, cols)
    else:
        out = torch.baddbmm(conv.bias[:, None].expand(n, -1, cols.shape[-1]), weight, cols)
    return out.view(n, conv.out_channels, ho, wo)


def fast_logits(net: nn.Module, blocks: list[Block], x: Tensor) -> Tensor:
    """``net(x)`` for a plain ConvNet whose blocks are ``blocks`` (see :func:`fast_forward`),
    with :class:`_AvgPool2` and an in-place ReLU; equal to ``net(x)`` up to float rounding, and
    differentiable in the parameters (and ``x``) as usual."""
    h = x
    for b in blocks:
        h = _conv(h, b.conv)
        if b.norm is not None:
            h = F.group_norm(h, b.norm.num_groups, b.norm.weight, b.norm.bias, b.norm.eps)
        h = F.relu(h, inplace=True)  # the conv's and the norm's backward do not keep h
        if b.pool:
            h = _AvgPool2.apply(h)
    return net.classifier(h.flatten(1))


def fast_forward(net: nn.Module) -> Callable[[Tensor], Tensor] | None:
    """``x ↦ fast_logits(net, blocks, x)`` for a plain ConvNet (the blocks
    :func:`fedistill.convblocks.plan` recognises), ``None`` for other networks."""
    blocks = plan(net) if isinstance(net, ConvNet) else None
    if blocks is None:
        return None
    return lambda x: fast_logits(net, blocks, x)


def synthetic_gradient(
    net: nn.Module, params: list[nn.Parameter], x: Tensor, target: Tensor
) -> tuple[Tensor, ...]:
    """∇_θ CE(net(x), target) with the graph kept, so it can be differentiated in x (and in
    soft-label logits that produced ``target``)."""
    return torch.autograd.grad(soft_cross_entropy(net(x), target), params, create_graph=True)


def matching_loss(
    net: nn.Module,
    real: LabeledImages,
    x_syn: Tensor,
    targets: Tensor,
    classes: list[int],
    ipc: int,
    batch_real: int,
    gen: torch.Generator,
    augment: DSA | None = None,
    grads: ChunkedGradients | None = None,
) -> Tensor:
    """Σ over present classes of D(∇ℓ(S_c), ∇ℓ(B_c)) for one network — the quantity DC
    minimises. ``x_syn`` holds ``ipc`` images per class of ``classes``, in that order;
    ``targets`` their labels (class ids or probability rows). The real gradients of all classes
    are started first (on ``grads``' workers) and the synthetic ones computed meanwhile."""
    grads = grads or ChunkedGradients()
    params = matched_parameters(net)
    by_class = real.class_indices()
    real_grads, syn_batches = [], []
    for j, c in enumerate(classes):
        xr = real.images[class_batch(by_class[c], batch_real, gen)].to(x_syn.device)
        xs = x_syn[j * ipc : (j + 1) * ipc]
        if augment is not None:  # siamese: the same draw for the real and the synthetic batch
            s = new_seed(gen)
            xr, xs = augment(xr, seed=s), augment(xs, seed=s)
        yr = torch.full((len(xr),), c, dtype=torch.long, device=xr.device)
        real_grads.append(grads.start(net, params, xr, yr))
        syn_batches.append((xs, targets[j * ipc : (j + 1) * ipc]))
    loss = x_syn.new_zeros(())
    for g_real, (xs, ys) in zip(real_grads, syn_batches, strict=True):
        loss = loss + match_loss(synthetic_gradient(net, params, xs, ys), g_real())
    return loss


def train_on_synthetic(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    epochs: int,
    batch_size: int,
    gen: torch.Generator,
    augment: DSA | None = None,
    grads: ChunkedGradients | None = None,
) -> None:
    """The inner loop: ``epochs`` passes of SGD over the (detached) synthetic set."""
    net.train()
    grads = grads or ChunkedGradients()
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        grads = ChunkedGradients(chunk=None)  # batch statistics couple the samples
    params = list(net.parameters())
    n = len(x)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen).to(x.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            xb = x[idx] if augment is None else augment(x[idx], generator=gen)
            for p, g in zip(params, grads.start(net, params, xb, y[idx])(), strict=True):
                p.grad = g
            opt.step()


def _freeze_batchnorm(
    net: nn.Module,
    real: LabeledImages,
    classes: list[int],
    gen: torch.Generator,
    device: torch.device,
) -> None:
    """As the reference: with BatchNorm, set its statistics from 16 real images per class and
    freeze them (a per-class synthetic batch is too small to estimate them)."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    by_class = real.class_indices()
    idx = torch.cat([class_batch(by_class[c], 16, gen) for c in classes])
    net.train()
    with torch.no_grad():
        net(real.images[idx].to(device))
    for m in bns:
        m.eval()


# --------------------------------------------------------------------------- the algorithm


def condense(
    real: LabeledImages,
    ipc: int,
    config: DCConfig,
    *,
    method: str = "dc",
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    record: dict[str, Any] | None = None,
) -> SyntheticSet:
    """Gradient matching as in the algorithm box of this module's docstring (real-init
    indices to ``record["exposed"]``)."""
    config.validate()
    device = torch.device(device)
    gen = seeded(seed)
    outer, inner = config.loops(ipc)
    classes = present_classes(real)
    k = real.num_classes

    # init: ipc images per present class (labels sorted by class)
    images, labels = init_images(real, ipc, config.init, gen, record)
    x_syn = images.to(device).requires_grad_(True)
    opt_img = torch.optim.SGD([x_syn], lr=config.lr_img, momentum=0.5)
    label_logits: Tensor | None = None
    if config.learn_labels:
        label_logits = (F.one_hot(labels, k).float() * config.label_init).to(device)
        label_logits.requires_grad_(True)
        opt_label = torch.optim.SGD([label_logits], lr=config.lr_label, momentum=0.5)
    hard = labels.to(device)

    strategy = config.dsa_strategy or default_strategy(real.info)
    augment = DSA(strategy) if config.dsa else None
    net_kwargs = (
        {
            "width": config.width,
            "depth": config.net_depth(real.info.height, real.info.width),
            "norm": config.norm,
        }
        if config.model == "convnet"
        else {}
    )
    history: list[float] = []
    # On the CPU, torch's thread count becomes the number of gradient workers and everything
    # else runs on one intra-op thread: no OpenMP barriers, and the set does not depend on the
    # thread count. On a GPU, batches are taken whole.
    on_cpu = device.type == "cpu"
    grads = ChunkedGradients(torch.get_num_threads() if on_cpu else 1, CHUNK if on_cpu else None)

    with (
        progress_bar(method, config.iterations, progress) as bar,
        single_threaded(),
        closing(grads),
    ):
        for it in range(config.iterations):
            # a freshly initialised network for every outer iteration
            net = build_model(config.model, real.info, **net_kwargs).to(device).train()
            opt_net = torch.optim.SGD(net.parameters(), lr=config.lr_net)
            loss_sum = 0.0
            for t in range(outer):
                _freeze_batchnorm(net, real, classes, gen, device)
                # match the gradients of every present class; one step on S (and labels)
                targets = hard if label_logits is None else label_logits.softmax(1)
                loss = matching_loss(
                    net, real, x_syn, targets, classes, ipc, config.batch_real, gen, augment, grads
                )
                # only S (and the label logits): no second-order gradients for θ
                learned = [x_syn] if label_logits is None else [x_syn, label_logits]
                for v, g in zip(learned, torch.autograd.grad(loss, learned), strict=True):
                    v.grad = g
                opt_img.step()
                if label_logits is not None:
                    opt_label.step()
                loss_sum += loss.item()
                if t == outer - 1:
                    break
                # inner loop: train the network on the current synthetic set
                with torch.no_grad():
                    y_train = hard if label_logits is None else label_logits.softmax(1)
                train_on_synthetic(
                    net,
                    opt_net,
                    x_syn.detach(),
                    y_train,
                    inner,
                    config.batch_train,
                    gen,
                    augment,
                    grads,
                )
            loss_avg = loss_sum / (len(classes) * outer)
            history.append(round(loss_avg, 6))
            bar.advance(match=loss_avg)
            log.debug(
                "%s iteration %d/%d: matching loss %.4f",
                method,
                it + 1,
                config.iterations,
                loss_avg,
            )

    out_labels = labels if label_logits is None else label_logits.detach().softmax(1).float()
    return make_set(
        x_syn.detach(),
        out_labels,
        real,
        method=method,
        ipc=ipc,
        seed=seed,
        iterations=config.iterations,
        config=config,
        extra={
            "loops": {"outer": outer, "inner": inner},
            "dsa_strategy": strategy if config.dsa else None,
            "match_loss": history,
        },
    )


@register("dc", DCConfig, "DC: gradient matching with the layer-wise distance (Zhao et al. 2021)")
def distill_dc(
    real: LabeledImages,
    ipc: int,
    config: DCConfig,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    record: dict[str, Any] | None = None,
) -> SyntheticSet:
    """DC: gradient matching (ICLR 2021)."""
    return condense(
        real,
        ipc,
        config,
        method="dc",
        seed=seed,
        device=device,
        progress=progress,
        record=record,
    )


@register("dsa", DSAConfig, "DSA: gradient matching with siamese augmentation (Zhao & Bilen 2021)")
def distill_dsa(
    real: LabeledImages,
    ipc: int,
    config: DCConfig,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    record: dict[str, Any] | None = None,
) -> SyntheticSet:
    """DSA: gradient matching with differentiable siamese augmentation (ICML 2021)."""
    return condense(
        real,
        ipc,
        config,
        method="dsa",
        seed=seed,
        device=device,
        progress=progress,
        record=record,
    )
