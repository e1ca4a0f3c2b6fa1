"""Privacy accounting: calibration, spent ε, budget checks — against Opacus's own accountants."""

from __future__ import annotations

import json
import math

import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant

from fedistill.errors import ConfigError, PrivacyBudgetExceeded
from fedistill.privacy import (
    PrivacyFacts,
    PrivacyLedger,
    calibrate_noise,
    check_budget,
    gaussian_noise,
    history_epsilon,
    ledger_of,
    noise_generator,
    privacy_summary,
    secure_generator,
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


def test_ledger_composes_a_history_and_round_trips_its_state():
    ledger = PrivacyLedger(3.0, DELTA, Q, planned_steps=20)
    ledger.reserve(10)
    for _ in range(10):
        ledger.spend()
    back = PrivacyLedger.from_state(json.loads(json.dumps(ledger.state())))
    assert back.history == ledger.history == [(ledger.noise_multiplier, Q, 10)]
    assert back.epsilon_spent() == ledger.epsilon_spent() < 3.0
    back.reserve(10)
    with pytest.raises(PrivacyBudgetExceeded, match="20 private steps, 10 are spent"):
        back.reserve(11)
    # a history of different mechanisms composes as Opacus's accountant does
    acc = RDPAccountant()
    for sigma, q, n in [(1.0, 0.01, 5), (2.0, 0.02, 7)]:
        for _ in range(n):
            acc.step(noise_multiplier=sigma, sample_rate=q)
    want = acc.get_epsilon(delta=DELTA)
    assert history_epsilon([(1.0, 0.01, 5), (2.0, 0.02, 7)], DELTA) == pytest.approx(want)
    assert history_epsilon([], DELTA) == 0.0
    assert history_epsilon([(0.0, 0.01, 1)], DELTA) == math.inf
    facts = ledger.facts(clip=1.0, noise="secure").to_dict()
    assert ledger_of(facts).history == ledger.history and ledger_of({"epsilon": 1.0}) is None


def test_secure_generators_are_unrecorded_and_replayable_ones_are_not():
    a, b = secure_generator(), secure_generator()
    assert not torch.equal(torch.randn(8, generator=a), torch.randn(8, generator=b))
    r1, r2 = noise_generator(5, secure=False), noise_generator(5, secure=False)
    assert torch.equal(torch.randn(8, generator=r1), torch.randn(8, generator=r2))
    public = torch.Generator().manual_seed(5)  # not the seed's own stream either
    assert not torch.equal(torch.randn(8, generator=noise_generator(5, False)),
                           torch.randn(8, generator=public))  # fmt: skip
    x = gaussian_noise((200_000,), 0.7, noise_generator(1, False))
    assert float(x.std()) == pytest.approx(0.7, rel=0.01) and abs(float(x.mean())) < 0.01


def test_privacy_summary_marks_replayable_noise():
    base = {"epsilon": 0.99, "delta": 1e-5, "budget": 1.0, "planned_steps": 400, "steps": 400}
    assert privacy_summary(base | {"noise": "secure"}).startswith("ε = 0.99 (δ = 1e-05; budget 1")
    assert "NOT A GUARANTEE" not in privacy_summary(base | {"noise": "secure"})
    assert "NOT A GUARANTEE" in privacy_summary(base | {"noise": "replayable"})
    assert privacy_summary(None) == "" and "∞" in privacy_summary({"epsilon": math.inf})
