"""``haba``: a factorised set of bases and hallucinators (HaBa).

Liu et al., "Dataset Distillation via Factorization", NeurIPS 2022. The set stores ``ipc``
*bases* per class (images) and ``H`` small *hallucinator* networks shared by all classes; every
hallucinator turns every base into a training image, so ``ipc`` stored images per class train
as ``ipc·H``. Hallucinator j is an encoder, a per-hallucinator scale and shift, and a decoder:
``h_j(b) = dec_j(σ_j ⊙ relu(enc_j(b)) + μ_j)`` (:func:`fedistill.factorised.hallucinate`).

Algorithm (what :func:`distill_haba` runs)::

    B ← ipc real images (or noise) of every present class            # the bases (exposed)
    h_1 … h_H ← hallucinators that start near the identity, each perturbed differently
    for k = 1 … iterations:
        ψ ← a fresh random ConvNet (frozen)                          # DM's network draw
        X ← {h_j(b) : b ∈ B, j ≤ H}   (labels: their base's)
        L_match ← Σ_c ‖mean ψ(A_ω_c(B_c^real)) − mean ψ(A_ω_c(X_c))‖²          # DM's loss
        L_div   ← mean over bases b, pairs i ≠ j of cos(ψ(h_i(b)), ψ(h_j(b)))   # diversity
        B ← SGD-momentum step, h ← Adam step, on ∇(L_match + λ · L_div)
    return B with the hallucinators' weights (one safetensors file; meta decoder "haba")

**What differs from the paper, and why.** The paper matches training trajectories (MTT) and
adds an adversarial contrastive term whose feature extractor is trained against the
hallucinators. Here the matching loss is DM's distribution matching on the hallucinated images
(far cheaper on a CPU, and the project's other matching loss), and the diversity term is the
cosine similarity between the ψ-embeddings of one base's H hallucinations, minimised, in the
same frozen ψ of each iteration (the paper's goal — hallucinations of a base that differ — with
no extra network to train). Start near the identity: with ``channels ≥ 2C`` the encoder's first
2C channels hold +b and −b (relu keeps both halves), and the decoder adds them back, so
``h_j(b) ≈ b`` at the start plus a small per-hallucinator perturbation.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedistill.augment import DSA, default_strategy, parse_strategy
from fedistill.data import LabeledImages
from fedistill.distill import register
from fedistill.distill._common import (
    INITS,
    frozen,
    init_images,
    make_set,
    present_classes,
    seeded,
)
from fedistill.distill._fast_convnet import single_threaded
from fedistill.distill.dm import DMConfig, DMLoop, synthetic_loss
from fedistill.errors import ConfigError
from fedistill.factorised import (
    HABA,
    HABA_KERNELS,
    MAX_HABA_CHANNELS,
    MAX_HALLUCINATORS,
    extra_shapes,
    hallucinate,
)
from fedistill.models import NORMS
from fedistill.progress import progress_bar
from fedistill.synthetic import SyntheticSet

log = logging.getLogger(__name__)


@dataclass
class HaBaConfig:
    """HaBa's hyper-parameters (the paper's H = 5 hallucinators); the matching part is DM's."""

    hallucinators: int = 5
    channels: int = 8  # the encoder's width (≥ 2 × image channels for the identity start)
    kernel: int = 3
    iterations: int = 200
    lr_img: float = 1.0  # the bases: SGD with momentum 0.5, as DM
    lr_hal: float = 1e-3  # the hallucinators: Adam
    diversity: float = 1.0  # λ, the weight of the diversity term
    init_noise: float = 0.05  # std of each hallucinator's perturbation at the start
    batch_real: int = 256
    init: str = "real"
    dsa: bool = True
    dsa_strategy: str | None = None
    width: int = 128
    depth: int | None = None
    norm: str = "instance"

    def validate(self) -> None:
        if not 1 <= self.hallucinators <= MAX_HALLUCINATORS:
            raise ConfigError(f"hallucinators must be in 1..{MAX_HALLUCINATORS}")
        if not 1 <= self.channels <= MAX_HABA_CHANNELS:
            raise ConfigError(f"channels must be in 1..{MAX_HABA_CHANNELS}")
        if self.kernel not in HABA_KERNELS:
            raise ConfigError(f"kernel must be one of {HABA_KERNELS}, got {self.kernel}")
        if self.iterations < 0 or self.batch_real < 1:
            raise ConfigError("iterations must be ≥ 0 and batch_real ≥ 1")
        if not (self.lr_img > 0 and self.lr_hal > 0):
            raise ConfigError("lr_img and lr_hal must be > 0")
        if not (self.diversity >= 0 and self.init_noise >= 0):
            raise ConfigError("diversity and init_noise must be ≥ 0")
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {INITS}, got '{self.init}'")
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {NORMS}, got '{self.norm}'")
        if self.width < 1 or (self.depth is not None and self.depth < 1):
            raise ConfigError("width and depth must be ≥ 1")
        if self.dsa_strategy is not None:
            try:
                parse_strategy(self.dsa_strategy)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None

    def arch(self) -> dict[str, int]:
        return {
            "hallucinators": self.hallucinators,
            "channels": self.channels,
            "kernel": self.kernel,
        }

    def dm_config(self) -> DMConfig:
        return DMConfig(
            iterations=self.iterations,
            lr_img=self.lr_img,
            batch_real=self.batch_real,
            dsa=self.dsa,
            dsa_strategy=self.dsa_strategy,
            width=self.width,
            depth=self.depth,
            norm=self.norm,
        )


def init_hallucinators(
    config: HaBaConfig, image_channels: int, gen: torch.Generator
) -> dict[str, Tensor]:
    """Hallucinator weights that start near the identity (see the module), each perturbed by
    its own N(0, init_noise²) draw."""
    shapes = extra_shapes({"decoder": HABA, "haba": config.arch()}, image_channels)
    params = {k: torch.randn(v, generator=gen) * config.init_noise for k, v in shapes.items()}
    params["haba.scale"] += 1.0
    c, k = image_channels, config.kernel
    if config.channels >= 2 * c:
        mid = k // 2
        for i in range(c):
            params["haba.enc_weight"][:, i, i, mid, mid] += 1.0
            params["haba.enc_weight"][:, c + i, i, mid, mid] -= 1.0
            params["haba.dec_weight"][:, i, i, mid, mid] += 1.0
            params["haba.dec_weight"][:, i, c + i, mid, mid] -= 1.0
    return params


def diversity_loss(net: nn.Module, images: Tensor, hallucinators: int) -> Tensor:
    """Mean cosine similarity between the embeddings of one base's hallucinations (pairs
    i ≠ j, averaged over bases); 0 with one hallucinator. ``images`` are base-major."""
    if hallucinators < 2:
        return images.new_zeros(())
    emb = F.normalize(net.embed(images), dim=1)
    emb = emb.reshape(-1, hallucinators, emb.shape[-1])
    sim = emb @ emb.transpose(1, 2)  # bases × H × H
    off = sim.sum((1, 2)) - sim.diagonal(dim1=1, dim2=2).sum(1)
    return (off / (hallucinators * (hallucinators - 1))).mean()


class HallucinatedDMLoop(DMLoop):
    """DM's pipelined loop (its network draws, real batches, DSA seeds), the loss taken on the
    hallucinated images plus the diversity term; steps the bases and the hallucinators."""

    def __init__(
        self,
        *args: Any,
        params: dict[str, Tensor],
        opt_hal: torch.optim.Optimizer,
        config: HaBaConfig,
        **kwargs: Any,
    ) -> None:
        self.params, self.opt_hal, self.haba = params, opt_hal, config
        super().__init__(*args, config=config.dm_config(), **kwargs)

    def step(self) -> tuple[float, float]:
        if self.upcoming is None:
            raise RuntimeError("no iterations left")
        target = self.upcoming
        self.upcoming = self._draw() if self.left > 0 else None
        images = hallucinate(self.syn, self.params)
        match = synthetic_loss(target, images, len(self.classes), self.augment)
        div = diversity_loss(target.net, images, self.haba.hallucinators)
        self.optimizer.zero_grad(set_to_none=True)
        self.opt_hal.zero_grad(set_to_none=True)
        (match + self.haba.diversity * div).backward()
        self.optimizer.step()
        self.opt_hal.step()
        return match.item(), div.item()


@register("haba", HaBaConfig, "HaBa: bases + hallucinators, DM-matched (Liu et al. 2022)")
def distill_haba(
    real: LabeledImages,
    ipc: int,
    config: HaBaConfig,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    model: nn.Module | None = None,
    record: dict[str, Any] | None = None,
) -> SyntheticSet:
    """``ipc`` bases per present class and ``config.hallucinators`` hallucinators (see the
    module). With ``init="real"`` the bases' real images go to ``record["exposed"]``."""
    config.validate()
    device = torch.device(device)
    gen = seeded(seed)
    images, labels = init_images(real, ipc, config.init, gen, record)
    syn = images.to(device).requires_grad_(True)
    params = {
        k: v.to(device).requires_grad_(True)
        for k, v in init_hallucinators(config, real.info.channels, gen).items()
    }
    opt = torch.optim.SGD([syn], lr=config.lr_img, momentum=0.5)
    opt_hal = torch.optim.Adam(list(params.values()), lr=config.lr_hal)
    augment = DSA(config.dsa_strategy or default_strategy(real.info)) if config.dsa else None
    base = None
    if model is not None:
        if not hasattr(model, "embed"):
            raise ConfigError("haba needs a model with an embed(x) method")
        base = frozen(copy.deepcopy(model).to(device).eval())
    k = len(present_classes(real))
    matches: list[float] = []
    divs: list[float] = []
    workers = torch.get_num_threads()
    with progress_bar("haba", config.iterations, progress) as bar, single_threaded():
        loop = HallucinatedDMLoop(
            real,
            syn,
            opt,
            gen=gen,
            augment=augment,
            base=base,
            workers=workers,
            params=params,
            opt_hal=opt_hal,
            config=config,
        )
        for _ in range(config.iterations):
            m, d = loop.step()
            matches.append(m / k)
            divs.append(d)
            bar.advance(loss=matches[-1])

    extra: dict[str, Any] = {}
    if matches:
        tail = max(1, min(10, len(matches) // 2))
        extra["haba_loss"] = {
            "match_first": sum(matches[:tail]) / tail,
            "match_last": sum(matches[-tail:]) / tail,
            "diversity_first": sum(divs[:tail]) / tail,
            "diversity_last": sum(divs[-tail:]) / tail,
            "averaged_over": tail,
        }
        log.info("haba: %s", extra["haba_loss"])
    out = make_set(
        syn.detach(),
        labels,
        real,
        method="haba",
        ipc=ipc,
        seed=seed,
        iterations=config.iterations,
        config=config,
        extra=extra,
    )
    meta = out.meta | {"decoder": HABA, "haba": config.arch()}
    return SyntheticSet(
        out.images, out.labels, meta, {k: v.detach().cpu() for k, v in params.items()}
    )
