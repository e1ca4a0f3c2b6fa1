"""Privacy accounting: calibration, spent ε, budget checks — against Opacus's own accountants."""

from __future__ import annotations

import math

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from fedistill.errors import ConfigError, PrivacyBudgetExceeded
from fedistill.privacy import (
    PrivacyFacts,
    PrivacyLedger,
    calibrate_noise,
    check_budget,
    spent_epsilon,
)

Q, DELTA = 256 / 8006, 1e-5


@pytest.mark.parametrize(
    ("accountant", "epsilon", "steps"), [("rdp", 10.0, 500), ("rdp", 1.0, 200), ("prv", 2.0, 50)]
)
def test_calibrate_then_spent_round_trip(accountant, epsilon, steps):
    sigma = calibrate_noise(epsilon, DELTA, Q, steps, accountant)
    spent = spent_epsilon(sigma, Q, steps, DELTA, accountant)
    assert spent <= epsilon  # never over the target
    assert spent >= epsilon - 0.05  # and not wastefully under it
    # a little less noise goes over the budget: σ is the smallest that fits
    assert spent_epsilon(sigma * 0.97, Q, steps, DELTA, accountant) > epsilon


@pytest.mark.parametrize(("accountant", "cls"), [("rdp", RDPAccountant), ("prv", PRVAccountant)])
def test_spent_epsilon_equals_an_accountant_stepped_step_by_step(accountant, cls):
    sigma, steps = 1.1, 40
    acc = cls()
    for _ in range(steps):
        acc.step(noise_multiplier=sigma, sample_rate=Q)
    assert spent_epsilon(sigma, Q, steps, DELTA, accountant) == pytest.approx(
        acc.get_epsilon(delta=DELTA), rel=1e-9
    )


def test_more_steps_or_less_noise_spend_more():
    base = spent_epsilon(1.0, Q, 100, DELTA)
    assert spent_epsilon(1.0, Q, 400, DELTA) > base
    assert spent_epsilon(0.7, Q, 100, DELTA) > base
    assert spent_epsilon(1.0, Q, 0, DELTA) == 0.0
    assert math.isinf(spent_epsilon(0.0, Q, 10, DELTA))


def test_budget_check_raises_with_a_clear_message():
    with pytest.raises(PrivacyBudgetExceeded, match=r"ε = 1\b.*raise the noise multiplier"):
        check_budget(1.0, DELTA, 0.3, Q, 1000)
    with pytest.raises(PrivacyBudgetExceeded, match="epsilon to inf"):
        check_budget(10.0, DELTA, 0.0, Q, 10)
    assert check_budget(math.inf, DELTA, 0.0, Q, 10) == math.inf  # a declared non-private run
    assert check_budget(10.0, DELTA, 2.0, Q, 100) < 10.0


def test_ledger_counts_steps_and_refuses_one_past_the_plan():
    ledger = PrivacyLedger(4.0, DELTA, Q, planned_steps=3)
    assert ledger.noise_multiplier > 0
    for _ in range(3):
        ledger.spend()
    with pytest.raises(PrivacyBudgetExceeded, match="3 private steps"):
        ledger.spend()
    facts = ledger.facts(clip=0.5).to_dict()
    assert facts["steps"] == 3 and facts["clip"] == 0.5 and facts["accountant"] == "rdp"
    assert facts["epsilon"] == pytest.approx(
        spent_epsilon(ledger.noise_multiplier, Q, 3, DELTA), rel=1e-12
    )
    assert facts["epsilon"] <= 4.0
    with pytest.raises(PrivacyBudgetExceeded):  # a given σ too small is refused up front
        PrivacyLedger(1.0, DELTA, Q, planned_steps=1000, noise_multiplier=0.5)


def test_facts_leave_out_what_does_not_apply():
    d = PrivacyFacts(mechanism="kip-rho", rho=0.9).to_dict()
    assert d == {"mechanism": "kip-rho", "rho": 0.9}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"accountant": "gdp-ish"},
        {"sample_rate": 0.0},
        {"sample_rate": 1.5},
        {"delta": 0.0},
        {"steps": -1},
    ],
)
def test_bad_arguments_are_config_errors(kwargs):
    args = {"sample_rate": Q, "steps": 10, "delta": DELTA, "accountant": "rdp"} | kwargs
    with pytest.raises(ConfigError):
        spent_epsilon(1.0, **args)
