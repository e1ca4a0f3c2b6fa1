"""``random``: a stratified random subset of the real data — the baseline every table needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fedistill.data import LabeledImages
from fedistill.distill import register
from fedistill.distill._common import check_init, make_set, present_classes, record_exposed, seeded
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
    record: dict[str, Any] | None = None,
) -> SyntheticSet:
    """Pick ``ipc`` distinct real images of every class present (all of a smaller class).

    The picked indices go to ``record["exposed"]`` only, never into the set's metadata: a set
    file or a federated reply must not say which of a client's images it holds."""
    gen = seeded(seed)
    check_init(real, ipc, "real")
    by_class = real.class_indices()
    idx = torch.cat(
        [
            by_class[c][torch.randperm(len(by_class[c]), generator=gen)[:ipc]]
            for c in present_classes(real)
        ]
    )
    record_exposed(record, idx)
    return make_set(
        real.images[idx],
        real.labels[idx],
        real,
        method="random",
        ipc=ipc,
        seed=seed,
        iterations=0,
        config=config,
    )
