"""``random``: a stratified random subset of the real data — the baseline every table needs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedistill.data import LabeledImages
from fedistill.distill import register
from fedistill.distill._common import check_ipc, make_set, sample_per_class, seeded
from fedistill.synthetic import SyntheticSet


@dataclass
class RandomConfig:
    pass


@register("random", RandomConfig, "stratified random subset of the real images")
def distill_random(
    real: LabeledImages,
    ipc: int,
    config: RandomConfig,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> SyntheticSet:
    """Pick ``ipc`` distinct real images of every class (no optimisation)."""
    gen = seeded(seed)
    check_ipc(real, ipc, "real")
    idx = sample_per_class(real, ipc, gen)
    return make_set(
        real.images[idx],
        real.labels[idx],
        real,
        method="random",
        ipc=ipc,
        seed=seed,
        iterations=0,
        config=config,
        extra={"source_indices": idx.tolist()},
    )
