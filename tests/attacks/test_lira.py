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


def test_lira_config_is_checked():
    with pytest.raises(ConfigError):
        LiRAConfig(num_shadows=1).validate()
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
    assert (tmp_path / "roc.png").stat().st_size > 5000
