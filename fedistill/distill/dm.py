"""``dm``: dataset condensation by distribution matching.

Zhao & Bilen, "Dataset Condensation with Distribution Matching", WACV 2023. The synthetic
images of every class are learned so that, under many randomly initialised networks ψ and
random siamese augmentations A_ω, their mean embedding matches the real images' mean embedding.

Algorithm (what :func:`distill_dm` runs)::

    S ← ipc real images (or noise) of every class c present in the data      # init
    for k = 1 … iterations:
        ψ ← a freshly initialised ConvNet, parameters frozen                 # (or the given
                                                                             #  model, perturbed)
        for every present class c:
            B_c ← batch_real random real images of class c
            ω_c ← one DSA draw;  B_c ← A_ω_c(B_c),  S_c ← A_ω_c(S_c)            # the SAME draw
        L ← Σ_c ‖ mean_{x ∈ B_c} ψ(x) − mean_{s ∈ S_c} ψ(s) ‖²
        S ← S − SGD-momentum(0.5) step of lr_img on ∇_S L
    return S

As in the reference (``main_DM.py``), every iteration samples a new network and never trains
it; the real embeddings are constants. Only classes with real images are distilled (a
federated client may hold a few); the set has ``ipc`` images for each of them.

**No soft labels.** The loss compares each class's mean embeddings; labels never enter it, so
there is nothing for learnable label logits to learn (``learn_labels`` belongs to the methods
whose loss sees labels: ``dc``/``dsa``, ``psg``, ``kip``; ``fedistill distill --method dm
--soft-labels`` is refused with a one-line error).

**How it runs fast on a CPU.** The loop above is computed for all classes at once: one
augmentation call per branch with one DSA draw per class (``groups``), one forward of every
class's real batch and one of the synthetic set. The real branch — nearly all of the work:
``classes × batch_real`` images against ``classes × ipc`` synthetic ones — needs no gradients
and goes through :func:`fedistill.distill._fast_convnet.frozen_embed` (channels-last chunks,
instance norm + ReLU + pooling fused by algebra, first-layer statistics from the input
patches); it equals ``ψ.embed`` to float rounding. Its chunks run on
``torch.get_num_threads() − 1`` background threads of one intra-op thread each, while the
calling thread (also on one intra-op thread during the loop) computes the synthetic branch,
differentiable, one class block at a time through the fused ConvNet blocks of
:mod:`fedistill.convblocks` (``ψ.embed`` for other networks; per class, the block's maps stay
in cache: half the time of ``ψ.embed`` on the whole set, measured on one AMD EPYC thread for
MNIST IPC 10), then joins the background threads on the real chunks none has started: as many
threads as torch's thread count, no OpenMP barriers, which a shared machine makes slow, and a
result that does not depend on the thread count.
``fast_embed=False`` embeds the real batch with ``ψ.embed`` too.
``precision="bf16"`` (opt-in) runs the real branch's deeper convolutions in bfloat16 on CPUs
with bf16 matrix units; the synthetic branch and its gradients stay float32: under bf16
autocast it ran 0.107 s against 0.14 per iteration on one AMD EPYC thread, but the whole CLI
was no faster (0.577 against 0.564 s per iteration, 5 interleaved runs each), so it stays
exact (``experiments/bench_dm_speed.py`` states the speed and the effect on the set's
accuracy).

**A given model** (``model=``; the current global model of multi-round FedDM, Xiong et al.
CVPR 2023): ψ is a frozen copy of that model in eval mode instead of a fresh ConvNet; with
``model_perturbation > 0`` each iteration adds Gaussian noise of that standard deviation to
the copy's parameters, so the matching still sees many networks around the model.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fedistill.augment import DSA, default_strategy, parse_strategy
from fedistill.convblocks import training_embed
from fedistill.data import DatasetInfo, LabeledImages
from fedistill.distill import register
from fedistill.distill._common import (
    INITS,
    frozen,
    init_images,
    make_set,
    present_classes,
    sample_per_class,
    seeded,
)
from fedistill.distill._fast_convnet import (
    DEFAULT_CHUNK,
    PRECISIONS,
    single_threaded,
    start_frozen_embed,
)
from fedistill.errors import ConfigError
from fedistill.models import MODELS, NORMS, build_model
from fedistill.progress import progress_bar
from fedistill.synthetic import SyntheticSet

log = logging.getLogger(__name__)


@dataclass
class DMConfig:
    """Hyper-parameters of DM; the reference's values (its ``Iteration`` is 20,000 on a GPU)."""

    iterations: int = 200  # one fresh network and one image update each
    lr_img: float = 1.0  # SGD with momentum 0.5 on the synthetic images
    batch_real: int = 256  # real images per class per iteration
    init: str = "real"  # "real" or "noise"
    dsa: bool = True
    dsa_strategy: str | None = None  # None: default_strategy(dataset) (no flips for digits)
    model: str = "convnet"  # the randomly initialised embedding network
    width: int = 128
    depth: int | None = None  # None: 3 (ConvNet-3), or 2 for images under 16 px (net_depth)
    norm: str = "instance"
    model_perturbation: float = 0.0  # std of the noise on a given model's parameters
    fast_embed: bool = True  # the fast no-grad forward for the real branch (same numbers)
    # "bf16": the real branch's deeper convolutions in bfloat16 (opt-in; not equal to fp32)
    precision: str = "fp32"

    def validate(self) -> None:
        if self.iterations < 0:
            raise ConfigError(f"iterations must be ≥ 0, got {self.iterations}")
        if not self.lr_img > 0:
            raise ConfigError(f"lr_img must be > 0, got {self.lr_img}")
        if self.batch_real < 1:
            raise ConfigError(f"batch_real must be ≥ 1, got {self.batch_real}")
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {INITS}, got '{self.init}'")
        if self.model not in MODELS:
            raise ConfigError(f"model must be one of {MODELS}, got '{self.model}'")
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {NORMS}, got '{self.norm}'")
        if self.width < 1 or (self.depth is not None and self.depth < 1):
            raise ConfigError(f"width and depth must be ≥ 1, got {self.width} and {self.depth}")
        if not self.model_perturbation >= 0:
            raise ConfigError(f"model_perturbation must be ≥ 0, got {self.model_perturbation}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got '{self.precision}'")
        if self.precision != "fp32" and not self.fast_embed:
            raise ConfigError("precision='bf16' is a mode of the fast real branch (fast_embed)")
        if self.dsa_strategy is not None:
            try:
                parse_strategy(self.dsa_strategy)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None

    def net_depth(self, height: int, width: int) -> int:
        """``depth``, or by default the literature's 3 — but 2 for images under 16 px: on 8×8
        digits a third block instance-normalises 2×2 maps and pools them to one value per
        channel, an embedding too poor to match (digits IPC 1, 100 iterations, lr_img 3–10:
        0.65–0.83 test accuracy at depth 3, 0.81–0.86 at depth 2; random IPC 1: 0.57–0.66)."""
        if self.depth is not None:
            return self.depth
        return 3 if min(height, width) >= 16 else 2

    def model_kwargs(self, info: DatasetInfo) -> dict:
        if self.model == "convnet":
            depth = self.net_depth(info.height, info.width)
            return {"width": self.width, "depth": depth, "norm": self.norm}
        if self.model == "mlp":
            return {"width": self.width}
        if self.model == "resnet18":
            return {"norm": self.norm}
        return {}


# --------------------------------------------------------------------------- one iteration


def class_means(emb: Tensor, num_classes: int) -> Tensor:
    """Mean embedding of each class from embeddings grouped by class (equal counts)."""
    return emb.reshape(num_classes, -1, emb.shape[-1]).mean(1)


@dataclass
class RealTarget:
    """One iteration's ψ, its DSA seed, and the real class means under ψ (maybe still being
    computed on the workers: :meth:`means` waits for them)."""

    net: nn.Module
    seed: int
    _pending: Callable[[], Tensor]
    _means: Tensor | None = None

    def means(self) -> Tensor:
        if self._means is None:
            self._means = self._pending()
        return self._means


def real_target(
    net: nn.Module,
    x_real: Tensor,
    num_classes: int,
    *,
    augment: DSA | None = None,
    seed: int = 0,
    fast: bool = True,
    workers: int = 1,
    precision: str = "fp32",
) -> RealTarget:
    """Start the real branch: mean ψ(A_ω_c(B_c)) per class for ``x_real`` grouped by class.

    ``fast`` embeds with :func:`start_frozen_embed` (on ``workers`` threads, the caller one
    of them once it asks for the means; ``precision="bf16"``: its deeper convolutions in
    bfloat16), else with ``ψ.embed``."""
    if augment is not None:
        groups = torch.arange(num_classes).repeat_interleave(len(x_real) // num_classes)
        x_real = augment(x_real, seed=seed, groups=groups)
    if fast:
        pending = start_frozen_embed(
            net, x_real, DEFAULT_CHUNK, workers=workers, precision=precision
        )
        return RealTarget(net, seed, lambda: class_means(pending(), num_classes))
    with torch.no_grad():
        means = class_means(net.embed(x_real), num_classes)
    return RealTarget(net, seed, lambda: means)


def synthetic_loss(
    target: RealTarget, x_syn: Tensor, num_classes: int, augment: DSA | None = None
) -> Tensor:
    """Σ_c ‖real mean_c − mean ψ(A_ω_c(S_c))‖², differentiable in ``x_syn`` (grouped by class;
    block ``c`` gets the same DSA draw as the real block ``c``)."""
    if augment is not None:
        groups = torch.arange(num_classes).repeat_interleave(len(x_syn) // num_classes)
        x_syn = augment(x_syn, seed=target.seed, groups=groups)
    # one class block at a time (its maps stay in cache) through the fused blocks: ~2× the
    # plain ψ.embed of the whole set, same embeddings up to float rounding
    embed = training_embed(target.net)
    mean_syn = class_means(torch.cat([embed(b) for b in x_syn.chunk(num_classes)]), num_classes)
    return ((target.means() - mean_syn) ** 2).sum()


def dm_loss(
    net: nn.Module,
    x_real: Tensor,
    x_syn: Tensor,
    num_classes: int,
    *,
    augment: DSA | None = None,
    seed: int = 0,
    fast: bool = True,
    workers: int = 1,
) -> Tensor:
    """Σ_c ‖mean ψ(A_ω_c(B_c)) − mean ψ(A_ω_c(S_c))‖² for batches grouped by class.

    ``x_real`` holds ``num_classes`` equal blocks of real images, ``x_syn`` the matching blocks
    of synthetic images; with ``augment``, block ``c`` of both gets the same DSA draw (seeded by
    ``seed``). Differentiable in ``x_syn`` only."""
    target = real_target(
        net, x_real, num_classes, augment=augment, seed=seed, fast=fast, workers=workers
    )
    return synthetic_loss(target, x_syn, num_classes, augment)


def _perturbed(base: nn.Module, std: float, gen: torch.Generator) -> nn.Module:
    """A copy of ``base`` with N(0, std²) added to every parameter (``base`` itself if 0)."""
    if std == 0:
        return base
    net = copy.deepcopy(base)
    with torch.no_grad():
        for p in net.parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            p.add_(noise.to(p.device), alpha=std)
    return net


class DMLoop:
    """The iterations of the algorithm box, one per :meth:`step`, pipelined.

    Iteration ``k + 1``'s ψ, real batches and real class means do not depend on the synthetic
    images, so they are drawn (in the same order of random draws as a plain loop) and started
    on the workers before iteration ``k`` updates the images: the real branch of the next
    iteration overlaps the synthetic branch (forward and backward) of this one."""

    def __init__(
        self,
        real: LabeledImages,
        syn: Tensor,
        optimizer: torch.optim.Optimizer,
        config: DMConfig,
        gen: torch.Generator,
        *,
        augment: DSA | None,
        base: nn.Module | None = None,
        workers: int = 1,
        iterations: int | None = None,
    ) -> None:
        self.real, self.syn, self.optimizer, self.config, self.gen = (
            real,
            syn,
            optimizer,
            config,
            gen,
        )
        self.augment, self.base, self.workers = augment, base, workers
        self.classes = present_classes(real)
        self.left = config.iterations if iterations is None else iterations  # targets to draw
        self.upcoming = self._draw() if self.left > 0 else None

    def _draw(self) -> RealTarget:
        """ψ (fresh, or the given model perturbed), the real batches and the DSA seed."""
        self.left -= 1
        cfg, real = self.config, self.real
        if self.base is None:  # a fresh random network, from torch's (seeded) global RNG
            net = frozen(build_model(cfg.model, real.info, **cfg.model_kwargs(real.info)))
            net = net.to(self.syn.device).train()
        else:
            net = _perturbed(self.base, cfg.model_perturbation, self.gen)
        idx = sample_per_class(real, cfg.batch_real, self.gen, self.classes)
        x_real = real.images[idx].to(self.syn.device)
        draw = int(torch.randint(2**31 - 1, (1,), generator=self.gen))
        return real_target(
            net,
            x_real,
            len(self.classes),
            augment=self.augment,
            seed=draw,
            fast=cfg.fast_embed,
            workers=self.workers,
            precision=cfg.precision,
        )

    def step(self) -> float:
        """One SGD step on the synthetic images; returns the DM loss before it."""
        if self.upcoming is None:
            raise RuntimeError("no iterations left")
        target = self.upcoming
        self.upcoming = self._draw() if self.left > 0 else None
        loss = synthetic_loss(target, self.syn, len(self.classes), self.augment)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()


# --------------------------------------------------------------------------- the method


@register("dm", DMConfig, "distribution matching (Zhao & Bilen, WACV 2023)")
def distill_dm(
    real: LabeledImages,
    ipc: int,
    config: DMConfig,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    model: nn.Module | None = None,
    record: dict[str, Any] | None = None,
) -> SyntheticSet:
    """Distill ``real`` into ``ipc`` images per present class by distribution matching.

    With ``init="real"`` the initial images' indices go to ``record["exposed"]``."""
    config.validate()
    device = torch.device(device)
    gen = seeded(seed)
    images, labels = init_images(real, ipc, config.init, gen, record)
    syn = images.to(device).requires_grad_(True)
    optimizer = torch.optim.SGD([syn], lr=config.lr_img, momentum=0.5)
    augment = DSA(config.dsa_strategy or default_strategy(real.info)) if config.dsa else None

    if model is not None:
        if not hasattr(model, "embed"):
            raise ConfigError("dm needs a model with an embed(x) method")
        base = frozen(copy.deepcopy(model).to(device).eval())
    else:
        base = None

    # torch's thread count becomes the number of real-branch workers; everything else runs on
    # one intra-op thread (no OpenMP barriers; and the set does not depend on the thread count)
    workers = torch.get_num_threads()
    k = len(present_classes(real))
    losses: list[float] = []
    with progress_bar("dm", config.iterations, progress) as bar, single_threaded():
        loop = DMLoop(
            real, syn, optimizer, config, gen, augment=augment, base=base, workers=workers
        )
        for _ in range(config.iterations):
            losses.append(loop.step())
            bar.advance(loss=losses[-1] / k)

    tail = max(1, min(10, len(losses) // 2))
    extra = {}
    if losses:
        extra["dm_loss"] = {
            "first": sum(losses[:tail]) / tail,
            "last": sum(losses[-tail:]) / tail,
            "averaged_over": tail,
        }
        log.info("dm: loss %.4g → %.4g (mean of %d iterations)", *extra["dm_loss"].values())
    return make_set(
        syn.detach(),
        labels,
        real,
        method="dm",
        ipc=ipc,
        seed=seed,
        iterations=config.iterations,
        config=config,
        extra=extra,
    )
