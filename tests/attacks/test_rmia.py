"""RMIA on scores whose answer is known (the digits runs live in test_lira.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

from attacks.lira import balanced_keep, loss_from_logit
from attacks.metrics import summarize
from attacks.rmia import log_pr_x, log_prob, pairwise_score, rmia_scores
from fedistill.errors import ConfigError


def _scores(k=16, n=3000, shift=2.0, seed=0):
    """Per-candidate difficulty spread wide; membership adds ``shift`` to φ (unit noise)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 3, n)
    keep = balanced_keep(k + 1, n, rng)
    phi = a[None, :, None] + shift * keep[:, :, None] + rng.standard_normal((k + 1, n, 1))
    return phi, keep


def test_rmia_calibrates_where_a_global_threshold_cannot():
    phi, keep = _scores()
    loss = summarize(loss_from_logit(phi[0]), keep[0])
    online = summarize(rmia_scores(phi[0], phi[1:], keep[1:]), keep[0])
    offline = summarize(rmia_scores(phi[0], phi[1:], keep[1:], offline=True), keep[0])
    assert loss.auc < 0.7
    assert online.auc > 0.8 and offline.auc > 0.75
    assert online.tpr_at_fpr[0.01] > 3 * max(loss.tpr_at_fpr[0.01], 0.01)
    assert offline.tpr_at_fpr[0.01] > 2 * max(loss.tpr_at_fpr[0.01], 0.01)


def test_rmia_is_chance_when_membership_changes_nothing():
    phi, keep = _scores(shift=0.0, seed=1)
    m = summarize(rmia_scores(phi[0], phi[1:], keep[1:]), keep[0])
    assert abs(m.auc - 0.5) < 0.04 and m.tpr_at_fpr[0.01] < 0.03


def test_probabilities_stay_in_log_space_so_memorised_examples_still_rank():
    phi = np.array([[40.0], [60.0], [-5.0]])  # p = 1 − 4e-18, 1 − 9e-27, 0.0067
    lp = log_prob(phi)
    assert lp[1] > lp[0] > lp[2] and np.isfinite(lp).all()
    two_views = np.array([[0.0, 2.0]])
    assert log_prob(two_views)[0] == pytest.approx(np.log((0.5 + expit(2.0)) / 2))


def test_offline_pr_x_follows_the_papers_linear_correction():
    shadow_phi = np.zeros((4, 2, 1))  # p = 0.5 everywhere
    keep = np.array([[1, 0], [0, 0], [1, 1], [0, 1]], bool)
    assert np.exp(log_pr_x(shadow_phi, keep, offline=True, a=1.0)) == pytest.approx([0.5, 0.5])
    assert np.exp(log_pr_x(shadow_phi, keep, offline=True, a=0.0)) == pytest.approx([0.75] * 2)
    assert np.exp(log_pr_x(shadow_phi, keep)) == pytest.approx([0.5, 0.5])


def test_pairwise_score_counts_population_samples_beaten_by_gamma():
    z = np.log(np.array([1.0, 2.0, 4.0, 8.0]))
    x = np.log(np.array([1.0, 4.1, 100.0]))
    assert pairwise_score(x, z, gamma=2.0).tolist() == [0.0, 0.5, 1.0]
    assert pairwise_score(x, z, gamma=1.0).tolist() == [0.0, 0.75, 1.0]


def test_rmia_checks_its_inputs():
    phi, keep = _scores(k=2, n=10)
    with pytest.raises(ConfigError):
        rmia_scores(phi[0], phi[1:], keep[1:], a=1.5)
    with pytest.raises(ConfigError):
        rmia_scores(phi[0], phi[1:], keep[1:], gamma=0.5)
    with pytest.raises(ValueError):
        rmia_scores(phi[0, :5], phi[1:], keep[1:])
    s = rmia_scores(phi[0], phi[1:], keep[1:], population=~keep[0])
    assert s.shape == (10,) and np.isfinite(s).all()
