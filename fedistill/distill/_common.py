"""Pieces every method shares: seeding, initialisation, class batches, the result record."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from fedistill.data import LabeledImages
from fedistill.errors import ConfigError
from fedistill.synthetic import SyntheticSet

INITS = ("real", "noise")


def seeded(seed: int) -> torch.Generator:
    """Seed torch's global RNG (model init) and return a CPU generator for data draws."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def check_ipc(real: LabeledImages, ipc: int, init: str) -> None:
    if init not in INITS:
        raise ConfigError(f"init must be one of {INITS}, got '{init}'")
    counts = [len(i) for i in real.class_indices()]
    if init == "real" and min(counts) < ipc:
        raise ConfigError(
            f"ipc {ipc} exceeds the smallest class ({min(counts)} images) "
            "for init 'real'; use fewer images per class or init 'noise'"
        )
    if min(counts) == 0:
        raise ConfigError("a class has no training images in this data; cannot distill it")


def init_images(
    real: LabeledImages, ipc: int, init: str, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``ipc`` images per class: random real images of that class, or standard normal noise.
    Labels are sorted by class: ``[0]*ipc + [1]*ipc + ...``."""
    check_ipc(real, ipc, init)
    k = real.num_classes
    labels = torch.arange(k).repeat_interleave(ipc)
    if init == "noise":
        return torch.randn(k * ipc, *real.info.shape, generator=gen), labels
    picks = [idx[torch.randperm(len(idx), generator=gen)[:ipc]] for idx in real.class_indices()]
    return real.images[torch.cat(picks)].clone(), labels


def sample_per_class(real: LabeledImages, n: int, gen: torch.Generator) -> Tensor:
    """Indices of ``n`` random images of every class (with replacement only if a class is
    smaller than ``n``), grouped by class."""
    out = []
    for idx in real.class_indices():
        if len(idx) >= n:
            out.append(idx[torch.randperm(len(idx), generator=gen)[:n]])
        else:
            out.append(idx[torch.randint(len(idx), (n,), generator=gen)])
    return torch.cat(out)


def make_set(
    images: Tensor,
    labels: Tensor,
    real: LabeledImages,
    *,
    method: str,
    ipc: int,
    seed: int,
    iterations: int,
    config: Any,
    extra: dict[str, Any] | None = None,
) -> SyntheticSet:
    """The SyntheticSet with full provenance."""
    hp = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config or {})
    meta: dict[str, Any] = {
        "dataset": real.info.name,
        "mean": list(real.info.mean),
        "std": list(real.info.std),
        "num_classes": real.num_classes,
        "method": method,
        "ipc": ipc,
        "seed": seed,
        "iterations": iterations,
        "hyperparameters": hp,
        "source_size": len(real),
    }
    if labels.is_floating_point():
        meta["label_kind"] = "soft"
    meta.update(extra or {})
    return SyntheticSet(images.detach().cpu(), labels.detach().cpu(), meta)
