"""``kcenter``: the greedy k-center coreset of every class.

Sener & Savarese, "Active Learning for Convolutional Neural Networks: A Core-Set Approach",
ICLR 2018 (the greedy 2-approximation of the k-center problem); a coreset baseline of the
distillation tables. The images are real and selected, not synthesised.

Algorithm (what :func:`distill_kcenter` runs)::

    φ ← a randomly initialised ConvNet's embedding (as herding's: fedistill.distill.herding)
    for every present class c:
        F_c ← {φ(x)/‖φ(x)‖ : x of class c};  μ_c ← mean(F_c)
        P ← {argmin_x ‖φ(x) − μ_c‖}                          # start: nearest the class mean
        while |P| < ipc:
            P ← P ∪ {argmax_{x ∈ c} min_{p ∈ P} ‖φ(x) − φ(p)‖}   # farthest-first
    return the images of every P (their indices go to record["exposed"])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fedistill.data import LabeledImages
from fedistill.distill import register
from fedistill.distill.herding import CoresetConfig, coreset_set, select_per_class
from fedistill.synthetic import SyntheticSet


@dataclass
class KCenterConfig(CoresetConfig):
    pass


def k_center(feats: Tensor, m: int) -> Tensor:
    """Positions of ``m`` rows of ``feats`` chosen farthest-first, starting from the row
    nearest the mean (ties: the lowest position)."""
    n = len(feats)
    m = min(m, n)
    first = int(torch.argmin(((feats - feats.mean(0)) ** 2).sum(1)))
    chosen = [first]
    nearest = ((feats - feats[first]) ** 2).sum(1)  # squared distance to the nearest center
    for _ in range(m - 1):
        p = int(torch.argmax(nearest))
        chosen.append(p)
        nearest = torch.minimum(nearest, ((feats - feats[p]) ** 2).sum(1))
    return torch.tensor(chosen, dtype=torch.int64)


@register("kcenter", KCenterConfig, "greedy k-center coreset (Sener & Savarese 2018)")
def distill_kcenter(
    real: LabeledImages,
    ipc: int,
    config: KCenterConfig,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    record: dict[str, Any] | None = None,
) -> SyntheticSet:
    """Pick ``ipc`` real images of every present class farthest-first (see the module)."""
    fseed = seed if config.feature_seed is None else config.feature_seed
    idx = select_per_class(real, ipc, config, k_center, seed=fseed, device=device)
    return coreset_set(
        real, idx, method="kcenter", ipc=ipc, seed=seed, config=config, record=record
    )
