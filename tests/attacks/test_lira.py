"""LiRA: the Gaussian fits on synthetic scores with a known answer, and a real run on digits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from attacks.lira import (
    LiRAConfig,
    attack_scores,
    balanced_keep,
    fit_gaussians,
    run_mia,
)
from attacks.metrics import summarize
from attacks.targets import PipelineConfig
from fedistill.errors import ConfigError


@pytest.fixture(autouse=True)
def _one_thread(_two_threads):
    torch.set_num_threads(1)  # tiny models: a second thread only adds contention


def test_balanced_keep_puts_every_candidate_in_half_the_models():
    keep = balanced_keep(8, 300, np.random.default_rng(0))
    assert keep.shape == (8, 300)
    assert (keep.sum(0) == 4).all()
    assert 100 < keep[0].sum() < 200  # each model still gets a random subset


def _synthetic_scores(k=16, n=2000, seed=0):
    """Per-candidate difficulty a_j varies a lot; membership adds +2 (unit noise)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 4, n)
    keep = balanced_keep(k + 1, n, rng)
    phi = a[None, :, None] + 2.0 * keep[:, :, None] + rng.standard_normal((k + 1, n, 1))
    return phi, keep, a


def test_gaussian_fits_recover_known_means_and_variance():
    phi, keep, a = _synthetic_scores(k=64)
    fit = fit_gaussians(phi[1:], keep[1:], fixed=True)
    assert np.abs(fit.mu_out[:, 0] - a).mean() < 0.25
    assert np.abs(fit.mu_in[:, 0] - a - 2).mean() < 0.25
    assert fit.sd_in[0, 0] == pytest.approx(1.0, abs=0.05)  # pooled: not inflated by spread of a
    per = fit_gaussians(phi[1:], keep[1:], fixed=False)
    assert np.median(per.sd_out) == pytest.approx(1.0, abs=0.1)


def test_lira_calibrates_per_example_where_a_global_threshold_cannot():
    phi, keep, _ = _synthetic_scores()
    s = attack_scores(phi[1:], keep[1:], phi[0], fixed=True)
    m = {k: summarize(v, keep[0]) for k, v in s.items()}
    assert m["loss"].auc < 0.65  # difficulty spread swamps the +2 membership shift
    assert m["lira_online"].auc > 0.9  # ideal: Φ(2/√2) ≈ 0.92
    assert m["lira_offline"].auc > 0.85
    assert m["lira_online"].tpr_at_fpr[0.01] > 5 * max(m["loss"].tpr_at_fpr[0.01], 0.01)


def test_candidates_without_in_shadows_still_get_a_finite_score():
    phi, keep, _ = _synthetic_scores(k=4, n=50)
    keep = keep.copy()
    keep[1:, :5] = False  # no shadow trained on the first five candidates
    s = attack_scores(phi[1:], keep[1:], phi[0], fixed=False)
    assert all(np.isfinite(v).all() for v in s.values())


def test_a_candidate_given_to_every_shadow_but_exposed_by_none_still_scores():
    phi, keep, _ = _synthetic_scores(k=2, n=40)
    keep = keep.copy()
    keep[1:, :3] = True  # in both shadows (no OUT side) ...
    exposed = np.zeros_like(keep)  # ... and exposed in none (no IN side either)
    exposed[1:, 10:20] = keep[1:, 10:20]
    s = attack_scores(phi[1:], keep[1:], phi[0], fixed=True, shadow_exposed=exposed[1:])
    assert all(np.isfinite(v).all() for v in s.values())


def test_lira_config_is_checked():
    with pytest.raises(ConfigError):
        LiRAConfig(num_shadows=1).validate()
    with pytest.raises(ConfigError, match="num_targets"):
        LiRAConfig(num_targets=0).validate()
    with pytest.raises(ConfigError, match="member_fit"):
        LiRAConfig(member_fit="some").validate()
    with pytest.raises(ConfigError, match="RMIA"):
        LiRAConfig(rmia_gamma=0.5).validate()
    assert LiRAConfig(num_shadows=16).fixed and not LiRAConfig(num_shadows=128).fixed


def test_lira_beats_the_loss_attack_at_low_fpr_on_an_overfit_pipeline(
    digits_train, digits_test, tmp_path
):
    """8 shadows of a cheap `real` pipeline (overfit MLP) on a 60-candidate pool."""
    cfg = PipelineConfig(
        model="mlp", epochs=300, lr=0.05, weight_decay=0.0, dsa=False, batch_size=64
    )
    out = run_mia(
        digits_train,
        digits_test,
        cfg,
        num_shadows=8,
        pool_size=60,
        seed=0,
        plot=tmp_path / "roc.png",
    )
    json.dumps(out)  # JSON-ready
    assert out["pool_size"] == 60 and out["target"]["members"] == 30
    assert out["target"]["budget"]["train_examples"] == 30
    assert out["target"]["test_accuracy"] > 0.5
    pooled = out["pooled"]
    assert pooled["loss"]["n_out"] == 9 * 30  # every model's non-members, pooled
    loss, online = pooled["loss"]["tpr@1%fpr"], pooled["lira_online"]["tpr@1%fpr"]
    assert online > 2 * loss and online > loss + 0.05
    assert pooled["lira_online"]["auc"] > pooled["loss"]["auc"]
    assert pooled["lira_offline"]["tpr@1%fpr"] > loss
    # RMIA's positive control: the overfit target, scored against the population
    assert pooled["rmia"]["tpr@1%fpr"] > 2 * loss and pooled["rmia"]["tpr@1%fpr"] > loss + 0.05
    # the real pipeline exposes every member: the two populations coincide
    pops = out["populations"]["rmia"]
    assert out["member_fit"] == "exposed" and out["exposed"] == 30
    assert pops["exposed"]["tpr_at_fpr"] == pops["all"]["tpr_at_fpr"]
    lo, hi = pops["all"]["ci95"]["tpr_at_fpr"]["0.01"]
    assert lo <= pops["all"]["tpr_at_fpr"]["0.01"] <= hi
    assert out["populations_pooled"]["loss"]["all"]["independent"] is False
    assert out["seconds"] > 0
    assert (tmp_path / "roc.png").stat().st_size > 5000


def test_selection_aware_fit_sees_what_a_member_fit_averages_away():
    """Planted: only *exposed* candidates move (+3); given-but-unused ones look like OUT.
    Each candidate is exposed in a quarter of the shadows that were given it."""
    rng = np.random.default_rng(0)
    k, n = 16, 3000
    a = rng.normal(0, 4, n)
    keep = balanced_keep(k + 1, n, rng)
    exposed = keep & (rng.random(keep.shape) < 0.25)
    phi = a[None, :, None] + 3.0 * exposed[:, :, None] + rng.standard_normal((k + 1, n, 1))
    member = attack_scores(phi[1:], keep[1:], phi[0], fixed=True)
    aware = attack_scores(phi[1:], keep[1:], phi[0], fixed=True, shadow_exposed=exposed[1:])
    pop = exposed[0] | ~keep[0]  # exposed members against non-members
    m_member = summarize(member["lira_online"][pop], exposed[0][pop])
    m_aware = summarize(aware["lira_online"][pop], exposed[0][pop])
    # measured: 0.67 against 0.50 (seed 0)
    assert m_aware.tpr_at_fpr[0.01] > m_member.tpr_at_fpr[0.01] + 0.1
    assert m_aware.auc > m_member.auc
    # RMIA needs no member fit: it sees the exposed ones either way
    assert summarize(aware["rmia"][pop], exposed[0][pop]).auc > 0.85


@pytest.mark.slow
def test_exposed_members_of_a_random_set_leak_at_least_twice_the_all_member_rate(
    digits_train, digits_test
):
    """random IPC 10 from 500 members (100 exposed), an MLP trained to convergence on the
    set, K = 16 shadows; pooled leave-one-out trials (measured: LiRA online exposed 0.100 vs
    all 0.029, RMIA 0.068 vs 0.023 at 1% FPR)."""
    cfg = PipelineConfig(
        method="random",
        ipc=10,
        model="mlp",
        epochs=300,
        lr=0.05,
        weight_decay=0.0,
        dsa=False,
        batch_size=64,
    )
    out = run_mia(
        digits_train,
        digits_test,
        cfg,
        num_shadows=16,
        pool_size=1000,
        seed=0,
        lira=LiRAConfig(n_boot=200),
    )
    assert out["member_fit"] == "exposed" and out["exposed"] == 100
    assert out["target"]["test_accuracy"] > 0.8  # converged on the set: a useful model
    for attack in ("lira_online", "rmia"):
        pops = out["populations_pooled"][attack]
        exp, all_ = pops["exposed"]["tpr_at_fpr"]["0.01"], pops["all"]["tpr_at_fpr"]["0.01"]
        assert exp >= 2 * all_, attack
        assert pops["exposed"]["ci95"]["tpr_at_fpr"]["0.01"][0] > 0.02, attack  # not chance


def test_independent_targets_add_trials_to_the_populations(digits_train):
    cfg = PipelineConfig(model="mlp", epochs=3, dsa=False)
    lira = LiRAConfig(num_shadows=2, num_targets=3, leave_one_out=False, n_boot=50)
    out = run_mia(digits_train, None, cfg, num_shadows=2, pool_size=40, lira=lira)
    assert out["attacks"]["loss"]["n_in"] == 20  # the first target, as before
    for attack in ("loss", "lira_online", "rmia"):
        cell = out["populations"][attack]["all"]
        assert cell["n_in"] == 3 * 20 and cell["n_out"] == 3 * 20
    assert out["pooled"] == {} and out["populations_pooled"] == {}


@pytest.mark.slow  # 42 s at load 12 (two spawned processes import torch); ~10 s quiet
def test_shadow_pipelines_in_worker_processes_equal_those_trained_in_turn(digits_train):
    """``jobs=2`` trains the pipelines in two single-threaded processes; each is bit for bit
    the pipeline trained in this (single-threaded) process, whichever worker took it."""
    from attacks.lira import score_models

    pool = digits_train.subset(np.arange(60))
    cfg = PipelineConfig(method="random", ipc=2, model="mlp", epochs=4, dsa=False)
    keep = balanced_keep(3, len(pool), np.random.default_rng(0))
    alone, runs = score_models(pool, cfg, keep, LiRAConfig(num_shadows=2), seed=3)
    pooled, runs2 = score_models(pool, cfg, keep, LiRAConfig(num_shadows=2, jobs=2), seed=3)
    assert np.array_equal(alone, pooled)
    assert len(np.unique(alone[:, :, 0], axis=0)) == 3  # three distinct models, not one
    assert runs2[0].model is not None and runs2[1].model is None  # the target kept, only it
    assert [r.exposed.tolist() for r in runs] == [r.exposed.tolist() for r in runs2]
    with pytest.raises(ConfigError, match="jobs must be ≥ 1"):
        LiRAConfig(jobs=0).validate()
