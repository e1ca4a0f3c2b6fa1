"""Training classifiers with the evaluation protocol's SGD schedule — one, or many at once.

:func:`train_classifier` trains one model. :func:`train_many` trains M models on one set
concurrently, each with its own initialisation (the models passed in), data order and
augmentation draws (its own ``torch.Generator``), and each model's trajectory is the one
:func:`train_classifier` gives it alone: the same code runs per model, only on another thread.

**Why threads, each single-threaded.** On a CPU, one ConvNet-128-3 step on an IPC-10 set is a
few dozen operations on small tensors; run with two intra-op threads, every operation ends in an
OpenMP barrier, and on a shared machine each barrier waits for the slower core. Giving each
model one core — ``workers`` Python threads, each running torch with one intra-op thread, taking
the next untrained model when done — removes the barriers and keeps each model's activations in
its core's cache, while the heavy kernels run outside the GIL. This is the same device as DM's
real branch (:mod:`fedistill.distill._fast_convnet`). The alternatives measured here (AMD EPYC,
2 cores shared with other jobs, ConvNet-128-3, 100 MNIST-sized images, 4 models) were slower:
one model after another on 2 threads and ``torch.func.vmap`` over stacked parameters (which
lowers each convolution to a grouped one); see ``experiments/bench_eval_speed.py``.

**Chunks of a batch.** A batch can be pushed through forward and backward in chunks of
``chunk`` images with the gradients accumulated (each chunk's mean loss weighted by its share of
the batch): the same gradient up to float rounding for a network without batch-dependent layers
(instance norm is per image; with batch norm chunking is refused), and each chunk's activations
stay in the core's cache — measured here (1 thread per model, ConvNet-128-3 on 100 MNIST-sized
images, reference geometry) a step takes about half the time in chunks of 10 as in one piece.
:func:`auto_chunk` picks a chunk for a ConvNet from a cache budget for its first activation.

**Idle threads help the last models.** Five models on two threads would train the fifth
alone while the other core idles (a lone model — the server's global model — always would).
:func:`map_models` with ``helpers=True`` (what :func:`train_many` and ``evaluate`` use) trains
the last ``len(models) % threads`` models after the others, each with its chunks computed by
``threads // r`` single-threaded threads at once (``chunk_workers``): every chunk's gradient
is the one a single thread computes, and they are summed into ``.grad`` in chunk order, as
``backward`` accumulates them — so the model is the same, bit for bit, as trained alone
(``tests/fedistill/test_trainer.py``). Whole batches (no chunks) stay on one thread.

**The fused block.** A ConvNet's steps run through
:func:`fedistill.convblocks.training_forward`: each block's norm, ReLU and pooling as one
autograd node whose forward and gradients equal the modules' bit for bit, without the slow NCHW
pooling kernels and the full-size pooled gradient (measured here, one thread, ConvNet-128-3 on a
random IPC-10 set of the MNIST subset with DSA, interleaved, AMD EPYC: 1.19× the steps per
second of ``model(x)``). ``fast=False`` trains through ``model(x)``; the trajectory is the same.

**bf16 (opt-in).** ``precision="bf16"`` runs each forward (and so its backward) under
``torch.autocast`` with bfloat16 — convolutions and the linear layer in bf16 on CPUs with bf16
matrix units (AMX, AVX-512 BF16), parameters, optimiser state and the loss in float32. It is not
equal to the fp32 trajectory; ``experiments/bench_eval_speed.py`` states its speed and its
effect on accuracy.

By default every model trains on one intra-op thread, so a model's result depends neither on
how many models train beside it nor on which worker trained it (bit for bit); against a run on
the caller's thread with several intra-op threads it differs by float rounding only. Each
augmented batch is given NCHW strides before the network (a permuted one-channel tensor would
send the convolutions and norm layers channels-last, several times slower per step here).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedistill.augment import DSA
from fedistill.convblocks import training_forward
from fedistill.progress import progress_bar

# Bytes of a ConvNet's first-block activation per chunk that :func:`auto_chunk` aims for.
CHUNK_BUDGET_BYTES = 5 * 2**20
PRECISIONS = ("fp32", "bf16")

T = TypeVar("T")
R = TypeVar("R")


class SGDSchedule(Protocol):
    """What training reads from a config (:class:`fedistill.evaluate.EvalConfig` has it)."""

    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int


def loss_for(labels: Tensor, label_kind: str):
    """The training loss matching the label kind."""
    if not labels.is_floating_point():
        return F.cross_entropy
    if label_kind == "targets":
        return lambda logits, y: F.mse_loss(logits, y)
    return lambda logits, y: F.cross_entropy(logits, y)  # probability targets


def _standard_layout(x: Tensor) -> Tensor:
    """``x`` with NCHW strides. Some augmentations return a permuted tensor; with one channel it
    counts as contiguous, yet the convolutions then run channels-last, and the norm layers'
    backward with them — measured here several times slower per step."""
    if x.dim() != 4:
        return x
    _, c, h, w = x.shape
    if x.stride() == (c * h * w, h * w, w, 1):
        return x
    return x.clone(memory_format=torch.contiguous_format)


def batch_independent(model: nn.Module) -> bool:
    """True when an image's output does not depend on the rest of its batch (no batch norm)."""
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def auto_chunk(model: nn.Module, budget_bytes: int = CHUNK_BUDGET_BYTES) -> int | None:
    """Images per forward/backward chunk for ``model``: for a ConvNet (anything with
    ``map_sizes`` and a first ``Conv2d`` in ``features``), as many as keep the first block's
    float32 activation within ``budget_bytes``; ``None`` (whole batches) otherwise."""
    sizes = getattr(model, "map_sizes", None)
    features = getattr(model, "features", None)
    if not sizes or not isinstance(features, nn.Sequential) or not batch_independent(model):
        return None
    conv = features[0]
    if not isinstance(conv, nn.Conv2d):
        return None
    per_image = conv.out_channels * sizes[0][0] * sizes[0][1] * 4
    return max(1, budget_bytes // per_image)


def train_classifier(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    cfg: SGDSchedule,
    *,
    label_kind: str = "hard",
    augment: DSA | None = None,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    progress: bool = False,
    chunk: int | None = None,
    precision: str = "fp32",
    fast: bool = True,
    chunk_workers: int = 1,
) -> nn.Module:
    """Train ``model`` on (images, labels) with the protocol's SGD schedule.

    ``chunk``: push each batch through forward and backward ``chunk`` images at a time,
    accumulating the gradient (see the module docstring); ``None`` or a model with batch norm:
    whole batches. ``precision``: ``"fp32"``, or ``"bf16"`` (autocast; see the module docstring).
    ``fast``: a ConvNet's steps through :func:`fedistill.convblocks.training_forward` (the same
    outputs and gradients bit for bit, in less time); ``False``: through ``model(x)``.
    ``chunk_workers``: with ``chunk``, that many threads (each on one intra-op thread) compute
    a batch's chunks at once, and their gradients are summed in chunk order — the same sum, bit
    for bit, as one thread accumulating them (see the module docstring).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    cast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    model.to(device).train()
    x, y = images.to(device), labels.to(device)
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [cfg.epochs // 2], 0.1)
    criterion = loss_for(labels, label_kind)
    forward = training_forward(model) if fast else model
    n = len(x)
    if chunk is not None and (chunk < 1 or not batch_independent(model)):
        chunk = None
    params = [p for p in model.parameters() if p.requires_grad]

    def chunk_gradient(xc: Tensor, yc: Tensor, weight: float) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The chunk's weighted loss and its gradient, on this thread alone."""
        if torch.get_num_threads() != 1:  # per OS thread under OpenMP
            torch.set_num_threads(1)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            part = criterion(forward(xc), yc).float()
        part = part * weight
        return part.detach(), torch.autograd.grad(part, params, allow_unused=True)

    pool = (
        ThreadPoolExecutor(chunk_workers, thread_name_prefix="fedistill-chunk")
        if chunk is not None and chunk_workers > 1 and device.type == "cpu"
        else None
    )
    try:
        with progress_bar("train", cfg.epochs, progress) as bar:
            for _ in range(cfg.epochs):
                order = torch.randperm(n, generator=generator).to(device)
                for start in range(0, n, cfg.batch_size):
                    idx = order[start : start + cfg.batch_size]
                    xb = x[idx]
                    if augment is not None:
                        xb = _standard_layout(augment(xb, generator=generator))
                    yb = y[idx]
                    opt.zero_grad(set_to_none=True)
                    if chunk is None or chunk >= len(idx):
                        with cast:
                            loss = criterion(forward(xb), yb).float()
                        loss.backward()
                    elif pool is None:
                        loss = torch.zeros((), device=device)
                        for s in range(0, len(idx), chunk):
                            with cast:
                                part = criterion(
                                    forward(xb[s : s + chunk]), yb[s : s + chunk]
                                ).float()
                            part = part * (min(chunk, len(idx) - s) / len(idx))
                            part.backward()
                            loss = loss + part.detach()
                    else:
                        loss = _parallel_chunks(pool, chunk_gradient, xb, yb, chunk, params, device)
                    opt.step()
                sched.step()
                if progress:
                    bar.advance(loss=loss.item())
    finally:
        if pool is not None:
            pool.shutdown()
    return model.eval()


def _parallel_chunks(
    pool: ThreadPoolExecutor,
    chunk_gradient: Callable[[Tensor, Tensor, float], tuple[Tensor, tuple[Tensor, ...]]],
    xb: Tensor,
    yb: Tensor,
    chunk: int,
    params: list[nn.Parameter],
    device: torch.device,
) -> Tensor:
    """A batch's chunks on ``pool``'s threads; their gradients summed into the parameters'
    ``.grad`` in chunk order, as ``backward`` accumulates them one chunk after another (the
    first chunk's gradient, then ``+=`` each next one: the same floats). Returns the loss."""
    n = len(xb)
    futures = [
        pool.submit(chunk_gradient, xb[s : s + chunk], yb[s : s + chunk], min(chunk, n - s) / n)
        for s in range(0, n, chunk)
    ]
    loss = torch.zeros((), device=device)
    for future in futures:
        part, grads = future.result()
        for p, g in zip(params, grads, strict=True):
            if g is None:  # not used by the forward: left without a gradient, as backward does
                continue
            if p.grad is None:
                p.grad = g
            else:
                p.grad += g
        loss = loss + part
    return loss


def default_workers(num_jobs: int, device: torch.device | str = "cpu") -> int:
    """Workers for ``num_jobs`` models: one per intra-op thread, at most one per model (each
    single-threaded); 1 off the CPU."""
    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(num_jobs, torch.get_num_threads()))


def map_models(
    fn: Callable[..., R],
    items: Sequence[T],
    *,
    workers: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    description: str = "models",
    helpers: bool = False,
) -> list[R]:
    """``[fn(item) for item in items]``, on worker threads sharing the intra-op threads.

    ``workers=None`` (on the CPU): ``min(len(items), threads)`` workers, each running torch with
    one intra-op thread — a lone model too, on one core: on this shared 2-core machine a
    ConvNet-128-3 epoch ran 4–8× faster on one thread than on two (OpenMP barriers under load);
    on a quiet machine two threads could be at most 2× faster. ``workers=1``: in order on the
    caller's thread with all its intra-op threads. ``workers=w > 1``: ``w`` threads of
    ``max(1, threads // w)`` intra-op threads each. Each worker takes the next item when done;
    results come back in ``items``' order, and the caller's thread setting is restored.
    ``fn`` must not touch torch's global RNG (give each item its own generator).

    ``helpers=True``: ``fn`` is called as ``fn(item, k)``, where ``k`` is how many
    single-threaded threads the item may use for its own pieces (``train_classifier``'s
    ``chunk_workers``). With ``workers=None`` on the CPU, the items are trained one per thread,
    ``threads`` at a time, except the last ``len(items) % threads``, which would leave threads
    idle (the fifth model of five on two threads; a lone model): they run after the others,
    each with ``threads // r`` threads of its own. Elsewhere ``k`` is 1."""
    threads = torch.get_num_threads()
    spread = helpers and workers is None and torch.device(device).type == "cpu"
    if torch.device(device).type != "cpu":
        workers, per_worker = 1, threads
    elif workers is None:
        workers, per_worker = default_workers(len(items), device), 1
    else:
        workers = min(max(1, workers), max(1, len(items)))
        per_worker = max(1, threads // workers)

    def call(item: T, k: int) -> R:
        return fn(item, k) if helpers else fn(item)

    with progress_bar(description, len(items), progress) as bar:
        if workers == 1 and per_worker == threads:  # (spreading needs per_worker == 1)
            out = []
            for item in items:
                out.append(call(item, 1))
                bar.advance()
            return out
        head = len(items) - (len(items) % threads if spread else 0)
        phases = [(items[:head], min(workers, max(1, head)), 1)]
        if head < len(items):  # the remainder: fewer items than threads, each gets a share
            r = len(items) - head
            phases.append((items[head:], r, threads // r))

        def run(item: T, k: int) -> R:
            # intra-op threads are per OS thread under OpenMP; asking first makes torch
            # initialise this thread's setting, so it is not reset later
            if torch.get_num_threads() != per_worker:
                torch.set_num_threads(per_worker)
            return call(item, k)

        out = []
        try:
            for batch, n_workers, k in phases:
                if not batch:
                    continue
                with ThreadPoolExecutor(n_workers, thread_name_prefix="fedistill-train") as pool:
                    futures = [pool.submit(run, item, k) for item in batch]
                    for f in futures:
                        out.append(f.result())
                        bar.advance()
            return out
        finally:
            torch.set_num_threads(threads)  # the workers' setting also reaches MKL's global one


def train_many(
    models: Sequence[nn.Module],
    images: Tensor,
    labels: Tensor,
    cfg: SGDSchedule,
    generators: Sequence[torch.Generator],
    *,
    label_kind: str = "hard",
    augment: DSA | None = None,
    device: torch.device | str = "cpu",
    workers: int | None = None,
    progress: bool = False,
    chunk: int | None = None,
    precision: str = "fp32",
    fast: bool = True,
) -> list[nn.Module]:
    """Train every model of ``models`` on (images, labels), model ``i`` drawing its batch order
    and augmentation from ``generators[i]``; concurrently (see the module docstring).

    Each model ends as :func:`train_classifier` would leave it trained alone with the same
    generator state, up to float rounding."""
    if len(models) != len(generators):
        raise ValueError(f"{len(models)} models but {len(generators)} generators")

    def one(i: int, helpers: int) -> nn.Module:
        return train_classifier(
            models[i],
            images,
            labels,
            cfg,
            label_kind=label_kind,
            augment=augment,
            device=device,
            generator=generators[i],
            chunk=chunk,
            precision=precision,
            fast=fast,
            chunk_workers=helpers,
        )

    return map_models(
        one,
        range(len(models)),
        workers=workers,
        device=device,
        progress=progress,
        description="train",
        helpers=True,
    )
