"""kcenter: farthest-first from the point nearest the class mean; the exposure record."""

from __future__ import annotations

import numpy as np
import torch

from fedistill.distill import distill
from fedistill.distill.kcenter import k_center


def test_k_center_starts_at_the_mean_and_goes_farthest_first():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(12, 3))
    got = k_center(torch.from_numpy(feats), 4).tolist()
    assert got[0] == int(np.argmin(((feats - feats.mean(0)) ** 2).sum(1)))
    for k in range(1, 4):  # each next pick maximises the distance to its nearest chosen point
        d = np.min(((feats[:, None] - feats[None, got[:k]]) ** 2).sum(-1), axis=1)
        assert got[k] == int(np.argmax(d))
    assert len(set(got)) == 4


def test_k_center_covers_better_than_random():
    """The k-center objective (largest distance of any point to its nearest pick) is at most
    that of 50 random subsets of the same size."""
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(200, 5))

    def radius(idx):
        return np.min(((feats[:, None] - feats[None, idx]) ** 2).sum(-1), axis=1).max()

    ours = radius(k_center(torch.from_numpy(feats), 10).numpy())
    assert all(ours <= radius(rng.choice(200, 10, replace=False)) for _ in range(50))


def test_kcenter_records_the_selected_real_images(digits_train):
    record: dict = {}
    syn = distill("kcenter", digits_train, 4, seed=0, record=record)
    idx = torch.from_numpy(record["exposed"])
    assert len(idx) == len(syn) == 40
    real = digits_train.images[idx].flatten(1)
    assert all((real == img.flatten()).all(1).any() for img in syn.images)
    assert sorted(syn.labels.tolist()) == sorted(digits_train.labels[idx].tolist())
