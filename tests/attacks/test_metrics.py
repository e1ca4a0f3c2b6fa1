"""Attack metrics on score distributions whose answer is known."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from attacks.metrics import (
    auc,
    balanced_accuracy,
    clopper_pearson,
    format_tpr,
    fpr_key,
    intervals,
    metrics_dict,
    plot_roc,
    population_report,
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


# --------------------------------------------------------------------------- intervals


def test_intervals_cover_the_true_auc_and_tpr_of_known_distributions():
    """Members N(1, 1), non-members N(0, 1): AUC Φ(1/√2), TPR@1% Pr[N(1,1) ≥ z_0.99]."""
    true_auc = norm.cdf(1 / math.sqrt(2))
    true_tpr = norm.sf(norm.ppf(0.99) - 1)
    rng = np.random.default_rng(4)
    y = np.r_[np.ones(400, bool), np.zeros(400, bool)]
    hits_auc = hits_tpr = 0
    reps = 40
    for r in range(reps):
        s = np.r_[rng.normal(1, 1, 400), rng.normal(0, 1, 400)]
        iv = intervals(s, y, (0.01,), n_boot=300, seed=r)
        hits_auc += iv.auc[0] <= true_auc <= iv.auc[1]
        hits_tpr += iv.tpr_at_fpr[0.01][0] <= true_tpr <= iv.tpr_at_fpr[0.01][1]
        assert iv.auc[1] - iv.auc[0] < 0.12  # and they are not vacuous
    assert hits_auc >= 0.85 * reps and hits_tpr >= 0.85 * reps


def test_a_zero_count_keeps_an_upper_bound_and_prints_below_resolution():
    y = np.r_[np.ones(100, bool), np.zeros(1000, bool)]
    s = np.r_[np.zeros(100), np.arange(1, 1001, dtype=float)]  # every member below every out
    cell = metrics_dict(s, y, n_boot=200)
    assert cell["tpr_at_fpr"] == {"0.01": 0.0, "0.001": 0.0}
    lo, hi = cell["ci95"]["tpr_at_fpr"]["0.001"]
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 100), rel=1e-6)  # Clopper–Pearson
    assert cell["fpr_resolution"] == pytest.approx(0.001)
    assert cell["tpr_at_fpr_text"]["0.001"] == "< 0.001"
    assert cell["auc"] == 0.0 and cell["ci95"]["auc"] == [0.0, 0.0]
    assert clopper_pearson(5, 10) == pytest.approx((0.187, 0.813), abs=1e-3)
    assert format_tpr(0.25, (0.2, 0.3), 0.001) == "0.250 [0.200, 0.300]"
    assert fpr_key(0.001) == "0.001" and fpr_key(0.01) == "0.01"


def test_exposed_population_is_reported_beside_all_members():
    """10 of 100 members are exposed and perfectly separated; the rest look like non-members."""
    rng = np.random.default_rng(5)
    s = np.r_[rng.normal(10, 1, 10), rng.normal(0, 1, 90), rng.normal(0, 1, 1000)]
    y = np.r_[np.ones(100, bool), np.zeros(1000, bool)]
    e = np.r_[np.ones(10, bool), np.zeros(1090, bool)]
    rep = population_report(s, y, e, n_boot=200)
    json.dumps(rep)
    assert set(rep) == {"all", "exposed"}
    assert rep["exposed"]["tpr_at_fpr"]["0.001"] == 1.0
    assert rep["exposed"]["n_in"] == 10 and rep["exposed"]["n_out"] == 1000
    assert rep["all"]["tpr_at_fpr"]["0.001"] == pytest.approx(0.1, abs=0.02)
    assert rep["exposed"]["ci95"]["tpr_at_fpr"]["0.01"][0] > 0.6  # CP for 10 of 10
    assert "exposed" not in population_report(s, y, np.zeros(1100, bool), n_boot=50)
    with pytest.raises(ValueError, match="exposed"):
        population_report(s, y, ~y, n_boot=50)


def test_roc_curve_agrees_with_a_plain_threshold_sweep():
    rng = np.random.default_rng(6)
    s = rng.integers(0, 20, 500).astype(float)
    y = rng.random(500) < 0.3
    roc = roc_curve(s, y)
    for t, f, p in zip(roc.thresholds[1:], roc.fpr[1:], roc.tpr[1:], strict=True):
        assert f == pytest.approx((s[~y] >= t).mean()) and p == pytest.approx((s[y] >= t).mean())
    assert roc.thresholds[0] == np.inf and roc.fpr[0] == 0 and roc.tpr[0] == 0
