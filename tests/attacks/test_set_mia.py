"""The server's view: attacks on the synthetic set itself, and the memorisation report (digits)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from attacks.set_mia import (
    SetMIAConfig,
    memorisation_report,
    nearest,
    run_set_mia,
    set_attack,
    unshift,
    within_class_nn_distances,
)
from attacks.targets import PipelineConfig
from fedistill.distill import distill
from fedistill.errors import ConfigError


@pytest.fixture(autouse=True)
def _one_thread(_two_threads):
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pool(digits_train):
    """1,000 candidates; each target pipeline gets a random half (500 members)."""
    return digits_train.subset(np.random.default_rng(0).permutation(len(digits_train))[:1000])


DM50 = {"iterations": 50, "batch_real": 16}
FAST = SetMIAConfig(n_boot=200)


def _exposed_tpr(res, distance, fpr="0.01"):
    return res["attacks"][distance]["exposed"]["tpr_at_fpr"][fpr]


def test_random_ipc10_set_gives_away_every_exposed_member(pool, tmp_path):
    res = run_set_mia(
        pool,
        PipelineConfig(method="random", ipc=10),
        FAST,
        memorisation_png=tmp_path / "m.png",
        plot=tmp_path / "roc.png",
    )
    json.dumps(res)
    assert res["members"] == 500 and res["exposed"] == 100
    for distance in ("l2", "l2_shift", "embed"):
        exp, all_ = (res["attacks"][distance][p] for p in ("exposed", "all"))
        assert exp["tpr_at_fpr"]["0.01"] >= 0.9 and exp["tpr_at_fpr"]["0.001"] >= 0.9
        assert exp["n_in"] == 100 and exp["n_out"] == 500 and exp["fpr_resolution"] == 0.002
        # over all 500 members, at FPR 0 the attack finds the 100 copies (and the rare member
        # that is a pixel-exact duplicate of one: digits has a few)
        assert 0.2 <= all_["tpr_at_fpr"]["0.001"] <= 0.21
        assert 0.2 <= all_["tpr_at_fpr"]["0.01"] < 0.25
        assert exp["ci95"]["tpr_at_fpr"]["0.01"][0] > 0.9  # Clopper–Pearson for 100 of 100
    mem = res["memorisation"]
    assert mem["share_within"] == 1.0 and mem["median_nearest_real"] == 0.0
    assert mem["threshold"] > 0
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
    assert res["plot"] == str(tmp_path / "roc.png") and (tmp_path / "roc.png").stat().st_size > 5000


def test_dm_real_init_after_50_iterations_still_gives_away_its_initial_images(pool):
    """The images move (median L2 ≈ 1.5, where distinct digits of a class are ≈ 3 apart), but
    mostly together: undoing the per-class shift finds the exposed members."""
    res = run_set_mia(pool, PipelineConfig(method="dm", ipc=10, method_options=DM50), FAST)
    assert res["exposed"] == 100
    assert _exposed_tpr(res, "l2_shift") >= 0.9
    assert _exposed_tpr(res, "l2") >= 0.75  # even without the shift most are found
    mem = res["memorisation"]
    assert 0 < mem["median_nearest_real"] < mem["median_real_nn"]
    assert mem["share_within"] >= 0.5


def test_dm_noise_init_set_reveals_almost_no_member(pool):
    res = run_set_mia(
        pool,
        PipelineConfig(method="dm", ipc=10, method_options={**DM50, "init": "noise"}),
        FAST,
    )
    assert res["exposed"] == 0
    for distance, cell in res["attacks"].items():
        assert "exposed" not in cell
        assert cell["all"]["tpr_at_fpr"]["0.01"] <= 0.1, distance
        assert abs(cell["all"]["auc"] - 0.5) < 0.1
    assert res["memorisation"]["share_within"] == 0.0


def test_shadow_calibration_and_independent_targets_keep_the_copies_on_top(pool):
    res = run_set_mia(
        pool,
        PipelineConfig(method="random", ipc=5),
        SetMIAConfig(distances=("l2",), num_shadows=2, num_targets=3, n_boot=100),
        pool_size=300,
    )
    assert res["calibrated"] and res["num_shadows"] == 2
    assert res["pool_size"] == 300 and res["num_targets"] == 3
    assert res["members"] == 3 * 150 and res["exposed"] == 3 * 50  # trials of 3 targets
    cell = res["attacks"]["l2"]["exposed"]
    assert cell["n_out"] == 3 * 150 and cell["tpr_at_fpr"]["0.001"] == 1.0


def test_unshift_undoes_a_planted_per_class_shift(digits_train):
    """Positive control: copies of real images, each class moved by its own vector."""
    syn = distill("random", digits_train.subset(np.arange(400)), 5, seed=0)
    shift = torch.randn(10, syn.images[0].numel(), generator=torch.Generator().manual_seed(0))
    moved = syn.images.flatten(1).double() + 0.5 * shift[syn.labels].double()
    cand = digits_train.images.flatten(1).double()
    before, _ = nearest(moved, cand, syn.labels, digits_train.labels)
    after, _ = nearest(
        unshift(moved, syn.labels, cand, digits_train.labels), cand, syn.labels, digits_train.labels
    )
    assert before.min() > 1.0
    assert after.max() < 1e-6


def test_nearest_looks_within_the_class_and_memorisation_threshold(digits_train):
    a = torch.tensor([[0.0, 0.0], [10.0, 10.0]], dtype=torch.float64)
    b = torch.tensor([[0.1, 0.0], [9.0, 9.0]], dtype=torch.float64)
    d, j = nearest(a, b, torch.tensor([1, 1]), torch.tensor([0, 1]))
    assert j.tolist() == [1, 1] and d[0] == pytest.approx(np.hypot(9, 9))
    d, j = nearest(a, b, torch.tensor([2, 1]), torch.tensor([0, 1]))  # class 2 absent: all of b
    assert j.tolist() == [0, 1]
    nn = within_class_nn_distances(digits_train)
    assert len(nn) == len(digits_train) and (nn > 0).all()
    noise = distill("dm", digits_train, 2, seed=0, iterations=0, init="noise")
    rep = memorisation_report(noise, digits_train, threshold=1e9)
    assert rep["share_within"] == 1.0 and rep["threshold_rule"] == "given"


def test_set_attack_and_config_checks(digits_train):
    data = digits_train.subset(np.arange(200))
    syn = distill("random", data.subset(np.arange(100)), 2, seed=0)
    member = np.arange(200) < 100
    with pytest.raises(ValueError, match="shadow_in"):
        set_attack(syn, data, member, shadow_sets=[syn, syn], shadow_in=np.zeros((1, 200), bool))
    with pytest.raises(ConfigError):
        SetMIAConfig(distances=("ssim",)).validate()
    with pytest.raises(ConfigError):
        SetMIAConfig(num_shadows=1).validate()
    with pytest.raises(ConfigError):
        SetMIAConfig(num_targets=0).validate()
    with pytest.raises(ConfigError, match="real"):
        run_set_mia(data, PipelineConfig(method="real"))
