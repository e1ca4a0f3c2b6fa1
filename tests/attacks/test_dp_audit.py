"""The DP audit: Clopper–Pearson and the ε bound on known answers, then real pipelines."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import binom, norm

from attacks.dp_audit import (
    audit_epsilon,
    clopper_pearson,
    epsilon_from_rates,
    make_canaries,
    run_dp_audit,
)
from attacks.targets import PipelineConfig
from fedistill.distill import methods
from fedistill.errors import ConfigError


@pytest.fixture(autouse=True)
def _one_thread(_two_threads):
    torch.set_num_threads(1)  # tiny models: a second thread only adds contention


def gaussian_mechanism_epsilon(sigma: float, delta: float) -> float:
    """Exact ε(δ) of the Gaussian mechanism, sensitivity 1 (Balle & Wang 2018):
    δ(ε) = Φ(1/2σ − εσ) − e^ε Φ(−1/2σ − εσ), solved by bisection."""

    def delta_of(eps: float) -> float:
        return norm.cdf(0.5 / sigma - eps * sigma) - math.exp(eps) * norm.cdf(
            -0.5 / sigma - eps * sigma
        )

    lo, hi = 0.0, 64.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta_of(mid) > delta else (lo, mid)
    return hi


# --------------------------------------------------------------------------- the statistics


def test_clopper_pearson_closed_forms():
    n, a = 50, 0.025
    assert clopper_pearson(0, n) == (0.0, pytest.approx(1 - a ** (1 / n)))
    assert clopper_pearson(n, n) == (pytest.approx(a ** (1 / n)), 1.0)
    lo, hi = clopper_pearson(10, 40, 0.99)
    assert lo < 0.25 < hi and clopper_pearson(10, 40, 0.9)[1] < hi
    with pytest.raises(ValueError):
        clopper_pearson(5, 4)


@pytest.mark.parametrize("p", [0.02, 0.1, 0.3, 0.5, 0.9])
def test_clopper_pearson_covers_at_least_its_confidence(p):
    """Exact coverage: the binomial mass of every k whose interval contains p."""
    n = 40
    covered = sum(
        binom.pmf(k, n, p)
        for k in range(n + 1)
        if clopper_pearson(k, n)[0] <= p <= clopper_pearson(k, n)[1]
    )
    assert covered >= 0.95


def test_epsilon_from_rates_matches_the_formula():
    assert float(epsilon_from_rates(0.1, 0.1, 0.0)) == pytest.approx(math.log(9))
    assert float(epsilon_from_rates(0.05, 0.5, 1e-5)) == pytest.approx(
        math.log((0.5 - 1e-5) / 0.05)
    )
    assert float(epsilon_from_rates(0.5, 0.5, 0.0)) == 0.0  # a coin flip proves nothing
    assert float(epsilon_from_rates(0.0, 0.3, 0.0)) == math.inf


def test_perfect_separation_reaches_the_ceiling_of_its_trial_count():
    r = audit_epsilon(np.ones(50), np.zeros(50), delta=1e-5)
    hi = 1 - 0.025 ** (1 / 50)
    assert r.epsilon_lb == pytest.approx(math.log((1 - 1e-5 - hi) / hi))
    assert r.epsilon_lb == pytest.approx(r.epsilon_lb_ceiling)
    assert r.counts == {"tp": 50, "fn": 0, "fp": 0, "tn": 50}
    assert r.tpr == 1.0 and r.fpr == 0.0 and r.to_dict()["epsilon_point"] is None
    json.dumps(r.to_dict())


def test_bound_never_exceeds_the_true_epsilon_of_a_gaussian_mechanism():
    """Scores are the mechanism's output itself (the optimal attack): the bound approaches
    but stays below the exact ε(δ); the threshold is chosen on separate trials."""
    rng = np.random.default_rng(0)
    sigma, delta, n = 1.0, 1e-5, 20_000
    true_eps = gaussian_mechanism_epsilon(sigma, delta)
    pick = audit_epsilon(rng.normal(1, sigma, n), rng.normal(0, sigma, n), delta)
    r = audit_epsilon(
        rng.normal(1, sigma, n), rng.normal(0, sigma, n), delta, threshold=pick.threshold
    )
    assert 1.0 < r.epsilon_lb < true_eps
    # and no privacy loss is "found" where there is none
    pick = audit_epsilon(rng.normal(0, 1, n), rng.normal(0, 1, n), delta)
    r = audit_epsilon(rng.normal(0, 1, n), rng.normal(0, 1, n), delta, threshold=pick.threshold)
    assert r.epsilon_lb < 0.1


def test_canaries_are_mislabelled_or_noise(digits_train):
    rng = np.random.default_rng(0)
    c = make_canaries(digits_train, 20, "mislabel", rng)
    assert len(c) == 20 and c.info == digits_train.info
    matches = (digits_train.images[None] == c.images[:, None]).flatten(2).all(2)
    src = matches.float().argmax(1)  # each canary is a real image of the source...
    assert matches.any(1).all()
    assert (digits_train.labels[src] != c.labels).all()  # ...with a wrong label
    noise = make_canaries(digits_train, 5, "noise", rng)
    assert noise.images.shape == (5, 1, 8, 8) and noise.labels.max() < 10
    with pytest.raises(ConfigError):
        make_canaries(digits_train, 5, "bogus", rng)


# --------------------------------------------------------------------------- real audits

OVERFIT = PipelineConfig(
    model="mlp", epochs=150, lr=0.05, weight_decay=0.0, dsa=False, batch_size=64
)


def test_non_private_overfit_pipeline_leaks_a_clearly_positive_epsilon(digits_train):
    out = run_dp_audit(
        digits_train, OVERFIT, num_runs=16, base_size=100, canaries_per_run=8, seed=0
    )
    json.dumps(out)
    assert out["claimed_epsilon"] is None and out["consistent"]
    assert out["runs_for_bound"] == 8 and out["runs_for_threshold"] == 8
    assert out["epsilon_lb"] > 1.0
    assert out["epsilon_lb"] <= out["epsilon_lb_ceiling"] + 1e-9
    # beside its ceiling: 8 runs × 8 canaries for the bound cannot show much, and say so
    assert out["ceiling"] == out["epsilon_lb_ceiling"] and out["trials"] == 64
    assert out["verdict"] == "inconclusive" and out["accountant_epsilon"] is None


@pytest.mark.slow
def test_dp_psg_audit_stays_below_its_claimed_epsilon(digits_train):
    if "psg" not in methods():
        pytest.skip("the DP-PSG method ('psg') is not registered yet")
    cfg = PipelineConfig(
        method="psg",
        ipc=2,
        method_options={
            "epsilon": 1.0,
            "delta": 1e-5,
            "iterations": 2,
            "outer_loop": 5,
            "batch_loop": 1,
            "inner_loop": 2,
            "batch_real": 32,
            "width": 32,
            "depth": 2,
        },
        model="mlp",
        epochs=150,
        lr=0.05,
        weight_decay=0.0,
        dsa=False,
        batch_size=64,
    )
    out = run_dp_audit(digits_train, cfg, num_runs=16, base_size=100, canaries_per_run=8, seed=0)
    assert out["claimed_epsilon"] == pytest.approx(1.0, rel=0.05)
    assert out["epsilon_lb"] <= out["claimed_epsilon"], out
    assert out["consistent"]
    assert out["accountant_epsilon"] <= out["claimed_epsilon"]
    assert out["verdict"] == ("inconclusive" if out["ceiling"] < 1.0 else "consistent")
