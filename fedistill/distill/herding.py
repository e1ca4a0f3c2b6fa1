"""``herding``: the coreset that keeps a class's running mean closest to its true mean.

Welling, "Herding Dynamical Weights to Learn", ICML 2009; the greedy form used for exemplar
selection by Rebuffi et al. (iCaRL, CVPR 2017), and the ``herding`` baseline of the DC / DM
tables. The images are real and selected, not synthesised.

Algorithm (what :func:`distill_herding` runs)::

    φ ← a ConvNet's embedding, randomly initialised under torch.manual_seed(feature_seed)
        (never trained; feature_seed defaults to the run's seed and is stored in the set)
    for every present class c:
        F_c ← {φ(x)/‖φ(x)‖ : x of class c};  μ_c ← mean(F_c)
        P ← ∅
        for k = 1 … ipc:
            p_k ← argmin_{x ∈ c, x ∉ P} ‖ μ_c − (φ(x) + Σ_{p ∈ P} φ(p)) / k ‖      # greedy
            P ← P ∪ {p_k}
    return the images of every P (their indices go to record["exposed"])

``features="pixels"`` runs the same selection on the flattened images (no network).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fedistill.data import LabeledImages
from fedistill.distill import register
from fedistill.distill._common import check_init, make_set, present_classes, record_exposed
from fedistill.errors import ConfigError
from fedistill.models import NORMS, build_model
from fedistill.synthetic import SyntheticSet

FEATURES = ("convnet", "pixels")


@dataclass
class CoresetConfig:
    """Feature space of a coreset selection: a randomly initialised ConvNet's embedding (the
    literature's ConvNet-128; depth 3, or 2 for images under 16 px as DM's ``net_depth``), or
    raw pixels. ``feature_seed`` (None: the run's seed) seeds the network's initialisation."""

    features: str = "convnet"
    feature_seed: int | None = None
    width: int = 128
    depth: int | None = None
    norm: str = "instance"
    normalize: bool = True  # L2-normalise every feature vector (as iCaRL)
    batch: int = 512  # images per no-grad forward

    def validate(self) -> None:
        if self.features not in FEATURES:
            raise ConfigError(f"features must be one of {FEATURES}, got '{self.features}'")
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {NORMS}, got '{self.norm}'")
        if self.width < 1 or (self.depth is not None and self.depth < 1):
            raise ConfigError(f"width and depth must be ≥ 1, got {self.width} and {self.depth}")
        if self.batch < 1:
            raise ConfigError(f"batch must be ≥ 1, got {self.batch}")


@dataclass
class HerdingConfig(CoresetConfig):
    pass


def features(
    real: LabeledImages, config: CoresetConfig, seed: int, device: torch.device | str = "cpu"
) -> Tensor:
    """N×D features of every image in ``real`` (float64 on the CPU, for exact comparisons)."""
    if config.features == "pixels":
        out = real.images.flatten(1).double()
    else:
        info = real.info
        depth = config.depth or (3 if min(info.height, info.width) >= 16 else 2)
        torch.manual_seed(seed)
        net = build_model("convnet", info, width=config.width, depth=depth, norm=config.norm)
        net = net.to(device).eval()
        with torch.no_grad():
            parts = [
                net.embed(real.images[i : i + config.batch].to(device)).double().cpu()
                for i in range(0, len(real), config.batch)
            ]
        out = torch.cat(parts)
    if config.normalize:
        out = out / out.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return out


def herd(feats: Tensor, m: int) -> Tensor:
    """Positions (into ``feats``' rows) of ``m`` greedily herded rows: step ``k`` adds the
    unused row that brings the mean of the ``k`` chosen rows closest to the mean of all rows
    (ties: the lowest position). ``m`` ≥ the number of rows returns every row."""
    n = len(feats)
    m = min(m, n)
    mu = feats.mean(0)
    total = torch.zeros_like(mu)
    free = torch.ones(n, dtype=torch.bool)
    chosen: list[int] = []
    for k in range(1, m + 1):
        dist = ((mu - (total + feats) / k) ** 2).sum(1)
        dist[~free] = float("inf")
        p = int(torch.argmin(dist))
        chosen.append(p)
        free[p] = False
        total = total + feats[p]
    return torch.tensor(chosen, dtype=torch.int64)


def select_per_class(
    real: LabeledImages,
    ipc: int,
    config: CoresetConfig,
    rule,
    *,
    seed: int,
    device: torch.device | str,
) -> Tensor:
    """Indices into ``real`` of ``rule(class features, ipc)`` for every present class, grouped
    by class (all of a class smaller than ``ipc``)."""
    config.validate()
    check_init(real, ipc, "real")
    feats = features(real, config, seed, device)
    by_class = real.class_indices()
    return torch.cat([by_class[c][rule(feats[by_class[c]], ipc)] for c in present_classes(real)])


def coreset_set(
    real: LabeledImages,
    idx: Tensor,
    *,
    method: str,
    ipc: int,
    seed: int,
    config: CoresetConfig,
    record: dict[str, Any] | None,
) -> SyntheticSet:
    """The selected real images as a set; the indices go to ``record["exposed"]`` only (a set
    file must not say which of a client's images it holds)."""
    record_exposed(record, idx)
    fseed = seed if config.feature_seed is None else config.feature_seed
    return make_set(
        real.images[idx],
        real.labels[idx],
        real,
        method=method,
        ipc=ipc,
        seed=seed,
        iterations=0,
        config=config,
        extra={"feature_seed": fseed},
    )


@register("herding", HerdingConfig, "herding coreset in a random ConvNet's features (Welling 2009)")
def distill_herding(
    real: LabeledImages,
    ipc: int,
    config: HerdingConfig,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    record: dict[str, Any] | None = None,
) -> SyntheticSet:
    """Herd ``ipc`` real images of every present class (see the module's algorithm box)."""
    fseed = seed if config.feature_seed is None else config.feature_seed
    idx = select_per_class(real, ipc, config, herd, seed=fseed, device=device)
    return coreset_set(
        real, idx, method="herding", ipc=ipc, seed=seed, config=config, record=record
    )
