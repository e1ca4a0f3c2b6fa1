"""Audits with power (issue 11): the white-box gradient-canary audit of DP-PSG's mechanism and
the one-run audit — positive controls (no noise, too little noise) must fail the claim, the
correct mechanism must not; every bound beside its ceiling and verdict."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import binom

from attacks.dp_audit import DPAudit, verdict
from attacks.dp_audit_power import (
    CanaryMechanism,
    gradient_canary_audit,
    one_run_audit,
    one_run_epsilon_lb,
    one_run_gradient_audit,
)
from fedistill.distill import distill
from fedistill.distill.psg import PSGConfig


@pytest.fixture(autouse=True)
def _one_thread(_two_threads):
    torch.set_num_threads(1)  # small tensors and a tiny MLP: a second thread only contends


N = 8006  # the MNIST subset's size: DP-PSG's defaults then run 400 steps at q = 256 / 8006


def _mechanism(epsilon: float, **kw) -> CanaryMechanism:
    scale = kw.pop("noise_scale", 1.0)
    return CanaryMechanism.from_psg(PSGConfig(epsilon=epsilon, **kw), N, noise_scale=scale)


def test_verdicts():
    assert verdict(2.5, 6.0, 2.0) == "violation"
    assert verdict(0.5, 6.0, 2.0) == "consistent"
    assert verdict(0.5, 2.1, 4.0) == "inconclusive"  # the trials could not have shown 4
    assert verdict(3.0, 6.0, None) == "inconclusive"  # no claim: ε = ∞, never shown
    a = DPAudit("x", 1.0, 2.0, math.inf, math.inf, 10, 1e-5, 0.95)
    d = json.loads(json.dumps(a.to_dict(), allow_nan=False))
    assert {"epsilon_lb", "ceiling", "claimed_epsilon", "accountant_epsilon", "trials"} <= set(d)
    assert d["claimed_epsilon"] is None and d["verdict"] == "inconclusive"


def test_canary_mechanism_is_the_one_psg_runs(digits_train):
    cfg = {"epsilon": 3.0, "width": 16, "iterations": 2, "outer_loop": 2, "batch_loop": 2}
    cfg |= {"inner_loop": 1, "batch_real": 24, "rounds": 2}
    syn = distill("psg", digits_train, 1, seed=0, **cfg)
    priv = syn.privacy  # q = batch_real / N̂, N̂ the run's DP count of the examples
    mech = CanaryMechanism.from_psg(PSGConfig(**cfg), priv["size"]["estimate"])
    assert mech.noise_multiplier == priv["noise_multiplier"]
    assert mech.sample_rate == priv["sample_rate"] and mech.steps == priv["planned_steps"]
    assert mech.clip == priv["clip"] and mech.claimed_epsilon == priv["budget"]
    # released coordinates: canary sampled at rate q, noise of std σ (units of C)
    gen = torch.Generator().manual_seed(0)
    big = CanaryMechanism(1.5, 0.2, 2000, 1e-5, 1.0)
    y = big.release(np.array([True, False] * 50), gen)
    assert y[1::2].std() == pytest.approx(1.5, rel=0.02) and abs(y[1::2].mean()) < 0.01
    assert y[0::2].mean() == pytest.approx(0.2, abs=0.01)


def test_no_noise_audits_at_epsilon_at_least_5():
    """σ = 0 (ε = ∞): 10,000 runs of the mechanism (5,000 for the bound) separate perfectly."""
    mech = _mechanism(math.inf, noise_multiplier=0.0)
    a = gradient_canary_audit(mech, 10_000, seed=0)
    assert a.epsilon_lb >= 5.0 and a.epsilon_lb == pytest.approx(a.ceiling)
    assert a.trials == 10_000 and a.details["trials_for_bound"] == 5_000
    assert a.accountant_epsilon == math.inf and a.verdict == "inconclusive"  # claims nothing


@pytest.mark.parametrize("seed", [0, 1])
def test_broken_mechanism_is_caught(seed):
    """Noise scaled by 0.1 while claiming ε = 2: 4,000 runs find ε_lb > 2 — a violation."""
    mech = _mechanism(2.0, noise_scale=0.1)
    a = gradient_canary_audit(mech, 4_000, seed=seed)
    assert a.epsilon_lb > 2.0 and a.verdict == "violation", a.to_dict()
    assert a.claimed_epsilon == 2.0 and a.accountant_epsilon > 100  # its σ really spends that
    assert gradient_canary_audit(mech, 4_000, statistic="sum", seed=seed).epsilon_lb > 2.0


@pytest.mark.parametrize("epsilon", [1.0, 4.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_correct_dp_psg_stays_within_its_claim(epsilon, seed):
    """The correct mechanism, 10,000 runs each: ε_lb ≤ ε, and the ceiling (≈ 6.5) is above the
    claim, so the audit could have shown a violation."""
    mech = _mechanism(epsilon)
    a = gradient_canary_audit(mech, 10_000, seed=seed)
    assert a.epsilon_lb <= epsilon and a.ceiling > epsilon and a.verdict == "consistent"
    assert a.accountant_epsilon <= epsilon


def test_too_few_trials_is_inconclusive():
    a = gradient_canary_audit(_mechanism(4.0), 64, seed=0)  # 16 per side for the bound
    assert a.ceiling < 4.0 and a.verdict == "inconclusive"


# --------------------------------------------------------------------------- one run


def test_one_run_bound_is_the_binomial_tail_of_the_paper():
    m, r, v, alpha = 1000, 200, 160, 0.05
    eps = one_run_epsilon_lb(m, r, v, 0.0)
    p = lambda e: 1 / (1 + math.exp(-e))  # noqa: E731
    assert binom.sf(v - 1, r, p(eps)) == pytest.approx(alpha, rel=1e-3)  # δ = 0: exact tail
    assert one_run_epsilon_lb(m, r, v, 1e-5) <= eps  # δ only weakens it
    assert one_run_epsilon_lb(m, r, v + 10, 1e-5) > one_run_epsilon_lb(m, r, v, 1e-5)
    assert one_run_epsilon_lb(m, r, r // 2, 1e-5) == 0.0  # a coin's score proves nothing
    with pytest.raises(ValueError):
        one_run_epsilon_lb(10, 20, 5, 1e-5)


def test_one_run_planted_leak_and_random_guesser():
    rng = np.random.default_rng(0)
    included = rng.random(1000) < 0.5
    leak = one_run_audit(included.astype(float), included, 100, 1e-5)  # outputs the bits
    assert leak.details == {"canaries": 1000, "guesses": 200, "correct": 200}
    assert leak.epsilon_lb >= 4.0 and leak.epsilon_lb == pytest.approx(leak.ceiling)
    lbs = [one_run_audit(rng.random(1000), included, 100, 1e-5).epsilon_lb for _ in range(20)]
    assert max(lbs) < 0.5 and np.median(lbs) == 0.0


def test_one_run_gradient_audit_controls():
    """5,000 gradient canaries in one run: σ = 0 and the broken mechanism fail their claims,
    the correct ε = 1 mechanism does not."""
    free = one_run_gradient_audit(_mechanism(math.inf, noise_multiplier=0.0), 5_000, seed=0)
    assert free.epsilon_lb >= 5.0
    broken = one_run_gradient_audit(_mechanism(2.0, noise_scale=0.1), 5_000, seed=0)
    assert broken.verdict == "violation"
    for seed in range(3):
        ok = one_run_gradient_audit(_mechanism(1.0), 5_000, seed=seed)
        assert ok.epsilon_lb <= 1.0 and ok.verdict == "consistent"


def test_one_run_black_box_audit_of_a_pipeline_that_memorises(digits_train):
    """400 mislabelled canaries, one overfit non-private MLP run (no claim: inconclusive by
    definition), 40 guesses each way: memorisation shows as a clearly positive bound."""
    from attacks.dp_audit_power import one_run_pipeline_audit
    from attacks.targets import PipelineConfig

    cfg = PipelineConfig(model="mlp", epochs=150, lr=0.05, weight_decay=0.0, dsa=False,
                         batch_size=64)  # fmt: skip
    a = one_run_pipeline_audit(digits_train, cfg, canaries=400, base_size=100, k=40, seed=0)
    assert a.details["guesses"] == 80 and a.trials == 400
    assert a.epsilon_lb > 1.0 and a.epsilon_lb <= a.ceiling
    assert a.claimed_epsilon is None and a.verdict == "inconclusive"
    json.dumps(a.to_dict())


def test_audit_psg_takes_the_method_options():
    from attacks.dp_audit_power import audit_psg

    a = audit_psg({"epsilon": 2.0, "iterations": 5}, N, 4_000)
    assert a.details["mechanism"]["steps"] == 5 * 10 * 2 and a.verdict == "consistent"
    assert audit_psg({"epsilon": 2.0}, N, 4_000, noise_scale=0.1).verdict == "violation"
