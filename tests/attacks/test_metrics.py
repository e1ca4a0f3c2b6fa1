"""Attack metrics on score distributions whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from attacks.metrics import (
    auc,
    balanced_accuracy,
    plot_roc,
    roc_curve,
    summarize,
    tpr_at_fpr,
)


def test_perfect_separation_scores_one():
    m = summarize(np.r_[np.full(50, 2.0), np.full(50, 1.0)], np.r_[np.ones(50), np.zeros(50)])
    assert m.auc == 1.0
    assert m.balanced_accuracy == 1.0
    assert m.tpr_at_fpr[0.01] == 1.0


def test_reversed_scores_give_zero_auc():
    m = summarize(np.r_[np.zeros(20), np.ones(20)], np.r_[np.ones(20), np.zeros(20)])
    assert m.auc == 0.0
    assert m.tpr_at_fpr[0.01] == 0.0
    assert m.balanced_accuracy == 0.5  # the threshold at +inf: guess "non-member" for all


def test_identical_distributions_are_chance():
    rng = np.random.default_rng(0)
    s = rng.standard_normal(40_000)
    y = np.r_[np.ones(20_000, bool), np.zeros(20_000, bool)]
    m = summarize(s, y)
    assert abs(m.auc - 0.5) < 0.015
    assert m.balanced_accuracy < 0.52
    assert m.tpr_at_fpr[0.01] < 0.02


def test_gaussian_shift_matches_closed_form_auc():
    rng = np.random.default_rng(1)
    d = 1.0
    s = np.r_[rng.normal(d, 1, 20_000), rng.normal(0, 1, 20_000)]
    y = np.r_[np.ones(20_000, bool), np.zeros(20_000, bool)]
    m = summarize(s, y)
    assert m.auc == pytest.approx(norm.cdf(d / math.sqrt(2)), abs=0.01)
    # best balanced accuracy of two unit Gaussians d apart: Φ(d/2)
    assert m.balanced_accuracy == pytest.approx(norm.cdf(d / 2), abs=0.01)
    # TPR at FPR 1%: Pr[N(d,1) ≥ z_0.99]
    assert m.tpr_at_fpr[0.01] == pytest.approx(norm.sf(norm.ppf(0.99) - d), abs=0.02)


def test_auc_with_ties_equals_mann_whitney():
    rng = np.random.default_rng(2)
    s = rng.integers(0, 5, 300).astype(float)  # many ties
    y = rng.random(300) < 0.4
    assert auc(roc_curve(s, y)) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auc(roc_curve(np.zeros(10), np.arange(10) < 5)) == 0.5


def test_tpr_at_low_fpr_is_a_conservative_step_and_reports_resolution():
    out = np.arange(100, dtype=float)  # 100 non-members: resolution 1%
    members = np.r_[np.full(10, 100.5), np.full(10, 97.5), np.zeros(80)]
    s, y = np.r_[members, out], np.r_[np.ones(100, bool), np.zeros(100, bool)]
    m = summarize(s, y)
    assert m.tpr_at_fpr[0.01] == pytest.approx(0.1)  # one false positive (99) allowed: not 97.5
    assert m.tpr_at_fpr[0.001] == pytest.approx(0.1)  # only FPR 0 meets 0.1%
    assert m.resolved == {0.01: True, 0.001: False}
    assert m.fpr_resolution == pytest.approx(0.01)
    roc = roc_curve(s, y)
    assert tpr_at_fpr(roc, 0.02) == pytest.approx(0.2)
    assert balanced_accuracy(roc) == pytest.approx((0.2 + 0.98) / 2)
    d = m.to_dict()
    assert d["tpr@1%fpr"] == pytest.approx(0.1) and d["tpr@0.1%fpr_resolved"] is False
    assert d["roc"]["fpr"][0] == 0.0 and d["roc"]["tpr"][-1] == 1.0


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="member"):
        summarize([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="length"):
        summarize([0.1, 0.2, 0.3], [True, False])
    with pytest.raises(ValueError, match="finite"):
        summarize([np.nan, 0.2], [True, False])


def test_log_log_roc_plot_is_written(tmp_path):
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(2000, bool), np.zeros(2000, bool)]
    curves = {
        "strong": summarize(np.r_[rng.normal(2, 1, 2000), rng.normal(0, 1, 2000)], y),
        "chance": summarize(rng.standard_normal(4000), y),
    }
    path = plot_roc(curves, tmp_path / "roc" / "mia.png", title="test")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
