"""herding: the greedy selection against a brute-force search, the exposure record, and the
literature's ordering herding ≥ random on digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedistill.distill import distill, get_method, methods
from fedistill.distill.herding import herd
from fedistill.errors import ConfigError
from fedistill.evaluate import EvalConfig, evaluate_set


@pytest.fixture(autouse=True)
def _one_thread(_two_threads):
    torch.set_num_threads(1)


def _brute_force_herding(feats: np.ndarray, m: int) -> list[int]:
    """Step k: try every unused row, keep the one whose running mean of k rows is closest to
    the mean of all rows (plain Python loops, independent of the library's vectorised form)."""
    mu = feats.mean(0)
    chosen: list[int] = []
    for k in range(1, m + 1):
        best, best_d = None, np.inf
        for i in range(len(feats)):
            if i in chosen:
                continue
            run = (feats[chosen].sum(0) + feats[i]) / k
            d = float(np.sum((mu - run) ** 2))
            if d < best_d:
                best, best_d = i, d
        chosen.append(best)
    return chosen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_herding_picks_what_a_brute_force_search_picks(seed):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(9, 4))
    got = herd(torch.from_numpy(feats), 5).tolist()
    assert got == _brute_force_herding(feats, 5)
    # and the first pick is the row nearest the mean over every possible single row
    assert got[0] == int(np.argmin(((feats - feats.mean(0)) ** 2).sum(1)))


def test_herding_records_exactly_the_selected_real_images(digits_train):
    record: dict = {}
    syn = distill("herding", digits_train, 3, seed=0, record=record)
    exposed = record["exposed"]
    assert len(exposed) == len(syn) == 30
    # every set image is the real image at one recorded index, with its label
    real = digits_train.images[torch.from_numpy(exposed)].flatten(1)
    for img, lab in zip(syn.images, syn.labels, strict=True):
        hit = (real == img.flatten()).all(1)
        assert hit.any()
        assert int(digits_train.labels[torch.from_numpy(exposed)][hit][0]) == int(lab)
    assert "exposed" not in syn.meta and syn.meta["feature_seed"] == 0


def test_herding_is_deterministic_and_listed(digits_train):
    a = distill("herding", digits_train, 2, seed=4)
    b = distill("herding", digits_train, 2, seed=4)
    assert torch.equal(a.images, b.images)
    assert "herding" in methods() and "kcenter" in methods()
    with pytest.raises(ConfigError):
        get_method("herding").make_config(features="sift")


def test_herding_beats_random_on_digits(digits_train, digits_test):
    """The literature's ordering at IPC 1. Measured (digits, 60 epochs, no DSA, 3 models,
    seeds 0–2 of the selection): herding 0.813 (0.810–0.818), random 0.629 (0.587–0.671); at
    IPC 10 herding and random (0.866) are near each other, so the test asserts IPC 1 with a
    10-point margin."""
    ev = EvalConfig(epochs=60, num_models=2, dsa=False)
    herding = evaluate_set(distill("herding", digits_train, 1, seed=0), digits_test, ev).mean
    rand = evaluate_set(distill("random", digits_train, 1, seed=0), digits_test, ev).mean
    assert herding >= rand + 0.10, (herding, rand)
