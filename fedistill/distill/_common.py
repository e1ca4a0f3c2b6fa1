"""Pieces every method shares: seeding, initialisation, class batches, the result record.

**Exposure record.** A method that copies real images into its set (``random``'s selection, the
real initialisation of DM / DC / DSA / KIP) says which ones through an optional ``record`` dict
(an out-parameter of :func:`fedistill.distill.distill`): ``record["exposed"]`` is the sorted
int64 array of indices into the method's own ``real`` input. It is for the attack harness only:
it never enters the set's ``meta``, so it is neither saved nor sent in a federated reply.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fedistill.data import LabeledImages
from fedistill.errors import ConfigError
from fedistill.synthetic import SyntheticSet

INITS = ("real", "noise")


def seeded(seed: int) -> torch.Generator:
    """Seed torch's global RNG (model init) and return a CPU generator for data draws."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def present_classes(real: LabeledImages) -> list[int]:
    """Classes with at least one image (a federated client may lack some classes)."""
    return [c for c, idx in enumerate(real.class_indices()) if len(idx) > 0]


def check_init(real: LabeledImages, ipc: int, init: str) -> None:
    if init not in INITS:
        raise ConfigError(f"init must be one of {INITS}, got '{init}'")
    if ipc < 1:
        raise ConfigError(f"ipc must be ≥ 1, got {ipc}")
    if not present_classes(real):
        raise ConfigError("no training images to distill")


def record_exposed(record: dict[str, Any] | None, indices: Tensor | np.ndarray) -> None:
    """Write the indices (into the method's ``real``) of the real images a run copied into its
    set to ``record["exposed"]`` (sorted, int64; empty for a noise start). No-op without a
    record."""
    if record is not None:
        record["exposed"] = np.sort(np.asarray(indices, dtype=np.int64).ravel())


def init_images(
    real: LabeledImages,
    ipc: int,
    init: str,
    gen: torch.Generator,
    record: dict[str, Any] | None = None,
) -> tuple[Tensor, Tensor]:
    """``ipc`` images for every class present in ``real``: random real images of that class
    (``init="real"``), or standard normal noise (``init="noise"``). A class with fewer than
    ``ipc`` images uses all of them and fills the rest with noise; absent classes get none.
    Labels come sorted by class: ``[c0]*ipc + [c1]*ipc + ...``. The indices of the real images
    used go to ``record["exposed"]`` (see the module docstring)."""
    check_init(real, ipc, init)
    classes = present_classes(real)
    labels = torch.tensor(classes).repeat_interleave(ipc)
    images = torch.randn(len(labels), *real.info.shape, generator=gen)
    used: list[Tensor] = []
    if init == "real":
        by_class = real.class_indices()
        for j, c in enumerate(classes):
            idx = by_class[c][torch.randperm(len(by_class[c]), generator=gen)[:ipc]]
            images[j * ipc : j * ipc + len(idx)] = real.images[idx]
            used.append(idx)
    record_exposed(record, torch.cat(used) if used else torch.zeros(0, dtype=torch.int64))
    return images, labels


def sample_per_class(
    real: LabeledImages, n: int, gen: torch.Generator, classes: list[int] | None = None
) -> Tensor:
    """Indices of ``n`` random images of each class in ``classes`` (default: all present),
    grouped by class; drawn with replacement only for a class smaller than ``n``."""
    by_class = real.class_indices()
    out = []
    for c in present_classes(real) if classes is None else classes:
        idx = by_class[c]
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
    release_size: bool = True,
) -> SyntheticSet:
    """The SyntheticSet with full provenance. ``source_size`` (the exact number of real
    images) is recorded unless ``release_size`` is False: a private method that keeps it
    private (DP-PSG) says in ``extra`` what it releases instead."""
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
    }
    if release_size:
        meta["source_size"] = len(real)
    if labels.is_floating_point():
        meta["label_kind"] = "soft"
    meta.update(extra or {})
    return SyntheticSet(images.detach().cpu(), labels.detach().cpu(), meta)


def class_batch(by_class: Tensor, n: int, gen: torch.Generator) -> Tensor:
    """Indices of up to ``n`` distinct images of one class (all of a smaller class)."""
    return by_class[torch.randperm(len(by_class), generator=gen)[:n]]


def new_seed(gen: torch.Generator) -> int:
    """A fresh seed drawn from ``gen`` (e.g. for one DSA draw)."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=gen))


def frozen(net: nn.Module) -> nn.Module:
    """``net`` with every parameter's ``requires_grad`` off (a fixed embedding network)."""
    for p in net.parameters():
        p.requires_grad_(False)
    return net
