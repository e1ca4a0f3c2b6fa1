"""The attacks' metrics where mutation testing found them under-tested (mutants of
attacks/metrics.py that survived the other tests: experiments/results/mutation/metrics.txt): the
thinned ROC, the null spread of the AUC, the bootstrap's vectorised readers against the plain
ones (ties included), the resampling itself and the percentiles it reads."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from scipy.stats import binomtest

import attacks.metrics as metrics
from attacks.metrics import (
    _auc_rows,
    _tpr_at_fpr_sorted,
    auc,
    binomial_std_auc,
    clopper_pearson,
    format_tpr,
    intervals,
    metrics_dict,
    roc_curve,
    summarize,
    thin_roc,
    tpr_at_fpr,
)


def _separable_with_edges(n_in: int = 600, n_out: int = 900, seed: int = 0):
    """Overlapping Gaussians, plus a member just under the top non-member (so the point at
    FPR = 1/n_out matters) and a member under every non-member (so TPR = 1 needs FPR = 1)."""
    rng = np.random.default_rng(seed)
    s_in, s_out = rng.normal(1.0, 1.0, n_in), rng.normal(0.0, 1.0, n_out)
    s_in[0] = s_out.max() - 1e-9
    s_in[1] = s_out.min() - 1.0
    scores = np.r_[s_in, s_out]
    return scores, np.r_[np.ones(n_in, bool), np.zeros(n_out, bool)]


def test_the_roc_keeps_every_threshold_and_cannot_be_changed():
    scores, members = _separable_with_edges(50, 70)
    roc = roc_curve(scores, members)
    assert len(roc.fpr) == len(np.unique(scores)) + 1  # every distinct score, and +inf
    with pytest.raises(dataclasses.FrozenInstanceError):
        roc.n_in = 3


def test_the_thinned_roc_has_200_points_and_reads_the_step_curve_at_each():
    scores, members = _separable_with_edges()
    m = summarize(scores, members)
    assert len(m.roc.fpr) > 1000
    fpr, tpr = thin_roc(m.roc)
    assert len(fpr) == 200 and fpr[0] == 0.0 and fpr[1] == pytest.approx(1 / 900)
    assert fpr[-1] == 1.0 and tpr[-1] == 1.0
    assert np.all(np.diff(fpr) > 0) and np.all(np.diff(tpr) >= 0)
    for f, t in zip(fpr, tpr, strict=True):
        assert t == tpr_at_fpr(m.roc, f)
    # the member just under the top non-member is in at FPR = 1/n_out, and not at 0
    assert tpr[1] > tpr[0]
    assert len(m.to_dict()["roc"]["fpr"]) == 200
    assert len(metrics_dict(scores, members, n_boot=20, roc_points=50)["roc"]["fpr"]) == 50


def test_the_null_spread_of_the_auc_is_exact():
    # every assignment of 3 members among 7 distinct scores is equally likely under the null
    n_in, n_out = 3, 4
    aucs = []
    for members in itertools.combinations(range(n_in + n_out), n_in):
        is_member = np.isin(np.arange(n_in + n_out), members)
        aucs.append(auc(roc_curve(np.arange(n_in + n_out, dtype=float), is_member)))
    assert binomial_std_auc(n_in, n_out) == pytest.approx(np.std(aucs), rel=1e-12)


def test_the_vectorised_readers_agree_with_the_roc_ties_included():
    rng = np.random.default_rng(1)
    s_in = rng.integers(0, 6, (5, 40)).astype(float)  # few distinct values: many ties
    s_out = rng.integers(0, 5, (5, 60)).astype(float)
    out_desc = -np.sort(-s_out, axis=1)
    rows = _auc_rows(s_in, out_desc[:, ::-1])
    for r in range(5):
        members = np.r_[np.ones(40, bool), np.zeros(60, bool)]
        roc = roc_curve(np.r_[s_in[r], s_out[r]], members)
        assert rows[r] == pytest.approx(auc(roc), abs=1e-12)
        for target in (0.0, 0.01, 0.05, 0.2, 0.5, 1.0):
            got = _tpr_at_fpr_sorted(s_in[r : r + 1], out_desc[r : r + 1], target)
            assert got.shape == (1,) and got[0] == pytest.approx(tpr_at_fpr(roc, target))


def test_the_interval_count_is_the_members_above_the_chosen_threshold():
    # a member tied with the top non-member is not above it: 0 of 2 at FPR 0
    scores = np.array([1.0, 0.9, 1.0, 0.5, 0.2])
    members = np.array([True, True, False, False, False])
    iv = intervals(scores, members, fprs=(0.0, 1 / 3), n_boot=50)
    assert iv.tpr_count[0.0] == 0 and iv.tpr_count[1 / 3] == 2


def test_bootstrap_resamples_every_candidate_with_equal_chance():
    # non-members 0 and 1 and one member at 0.5: a replicate's AUC is 1, 0.5 or 0 with
    # probabilities 1/4, 1/2, 1/4, so the 95 % interval is [0, 1]
    iv = intervals([0.5, 0.0, 1.0], [True, False, False], fprs=(), n_boot=4000)
    assert iv.auc == (0.0, 1.0)
    # members -10, 10, 10 against ties at 0: all three draws are the first member (AUC 0)
    # with probability 1/27 = 3.7 % > 2.5 %, so the interval starts at 0 (measured: 143 of
    # 4000 replicates; a resampler drawing index -1 too, favouring the last member, gives 60)
    iv = intervals([-10.0, 10.0, 10.0, 0.0, 0.0, 0.0], [True] * 3 + [False] * 3, (), n_boot=4000)
    assert iv.auc[0] == 0.0


@pytest.mark.parametrize("level", [0.95, 0.9])
def test_the_interval_is_read_at_the_percentiles_of_its_level(level, monkeypatch):
    calls = []
    real = np.percentile

    def spy(a, q, *args, **kwargs):
        calls.append(list(np.atleast_1d(q)))
        return real(a, q, *args, **kwargs)

    monkeypatch.setattr(metrics.np, "percentile", spy)
    scores, members = _separable_with_edges(30, 40)
    intervals(scores, members, n_boot=50, level=level)
    tail = (1 - level) / 2 * 100
    assert calls and all(q == pytest.approx([tail, 100 - tail]) for q in calls)


def test_metrics_dict_reports_the_default_intervals():
    scores, members = _separable_with_edges(30, 40)
    cell = metrics_dict(scores, members)  # the defaults: B = 1000, seed 0
    iv = intervals(scores, members, n_boot=1000, seed=0)
    assert cell["ci95"]["auc"] == list(iv.auc) and "B=1000" in cell["ci_method"]
    assert cell["ci95"]["tpr_at_fpr"]["0.01"] == list(iv.tpr_at_fpr[0.01])
    assert "roc" not in cell  # a ROC only when asked for (roc_points > 0)


def test_a_roc_of_exactly_200_points_is_kept_as_it_is():
    scores = np.arange(199, dtype=float)
    members = scores % 3 == 0
    roc = roc_curve(scores, members)
    assert len(roc.fpr) == 200
    fpr, tpr = thin_roc(roc)
    assert np.array_equal(fpr, roc.fpr) and np.array_equal(tpr, roc.tpr)


def test_clopper_pearson_at_zero_all_and_in_between():
    n = 20
    assert clopper_pearson(0, n) == (0.0, pytest.approx(1 - 0.025 ** (1 / n)))
    assert clopper_pearson(n, n) == (pytest.approx(0.025 ** (1 / n)), 1.0)
    exact = binomtest(7, n).proportion_ci(confidence_level=0.95, method="exact")
    assert clopper_pearson(7, n) == (pytest.approx(exact.low), pytest.approx(exact.high))


def test_a_tpr_at_the_resolution_is_a_number_and_below_it_is_not():
    assert format_tpr(0.01, None, 0.01) == "0.010"
    assert format_tpr(0.0099, (0.0, 0.05), 0.01) == "< 0.01"


@pytest.mark.parametrize("n", [100, 2500])  # 2500: chunks of 800 and 200
def test_the_bootstrap_draws_exactly_its_replicates_whatever_the_pool(n, monkeypatch):
    rows = []
    real = metrics._auc_rows

    def count(s_in, s_out):
        rows.append(len(s_in))
        shapes.append((s_in.shape, s_out.shape))
        return real(s_in, s_out)

    shapes = []

    monkeypatch.setattr(metrics, "_auc_rows", count)
    rng = np.random.default_rng(0)
    iv = intervals(rng.normal(size=n), np.arange(n) % 2 == 0, fprs=(), n_boot=1000)
    assert sum(rows) == 1000 and max(rows) <= max(1, 2_000_000 // n)
    # every replicate scores all its resampled members against all its non-members
    assert shapes and all(a[1] == n // 2 and o == a for a, o in shapes)
    assert "B=1000" in iv.method
    assert "B=1000" in intervals(rng.normal(size=20), np.arange(20) < 10, fprs=()).method


def test_non_members_are_resampled_with_equal_chance_too():
    # members tied at 0 against non-members 10, -10, -10: all three draws are the first
    # non-member (AUC 0) with probability 1/27 (measured: 156 of 4000 replicates;
    # a resampler drawing index -1 too, favouring the last non-member, gives 64)
    iv = intervals([0.0, 0.0, 0.0, 10.0, -10.0, -10.0], [True] * 3 + [False] * 3, (), n_boot=4000)
    assert iv.auc[0] == 0.0


def test_intervals_are_reproducible_with_seed_0_by_default():
    scores, members = _separable_with_edges(30, 40)
    assert intervals(scores, members, n_boot=200) == intervals(scores, members, n_boot=200, seed=0)


def test_the_metrics_repr_leaves_out_the_roc_arrays():
    scores, members = _separable_with_edges(30, 40)
    text = repr(summarize(scores, members))
    assert "auc=" in text and "roc=" not in text and "thresholds" not in text
