"""The privacy accounting where mutation testing found it under-tested (mutants of
fedistill/privacy.py that survived the other tests: experiments/results/mutation/privacy.txt):
what zero steps and one step spend, when calibration needs no noise at all, the noise's scale,
the budget message, a ledger that composes rounds run at different noise levels, and noise
that is secure unless asked otherwise."""

from __future__ import annotations

import math

import pytest
import torch

from fedistill.errors import ConfigError, PrivacyBudgetExceeded
from fedistill.privacy import (
    PrivacyLedger,
    calibrate_noise,
    check_budget,
    gaussian_noise,
    history_epsilon,
    noise_generator,
    spent_epsilon,
)

Q, DELTA = 0.01, 1e-5


@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_zero_steps_spend_nothing_even_without_noise(sigma):
    assert spent_epsilon(sigma, Q, 0, DELTA) == 0.0
    assert check_budget(0.1, DELTA, sigma, Q, 0) == 0.0


def test_one_step_spends_a_positive_finite_epsilon_and_one_step_without_noise_infinity():
    one = spent_epsilon(1.0, Q, 1, DELTA)
    assert 0.0 < one < math.inf
    assert spent_epsilon(1.0, Q, 2, DELTA) > one
    assert spent_epsilon(0.0, Q, 1, DELTA) == math.inf


def test_calibration_needs_no_noise_for_zero_steps_or_an_infinite_budget_and_some_for_one_step():
    assert calibrate_noise(1.0, DELTA, Q, 0) == 0.0
    assert calibrate_noise(math.inf, DELTA, Q, 100) == 0.0
    sigma = calibrate_noise(1.0, DELTA, Q, 1)
    assert sigma > 0 and spent_epsilon(sigma, Q, 1, DELTA) <= 1.0


def test_the_budget_message_says_whether_there_was_no_noise_or_too_little():
    with pytest.raises(PrivacyBudgetExceeded) as none:
        check_budget(10.0, DELTA, 0.0, Q, 10)
    assert "no noise (σ = 0) spends ε = ∞" in str(none.value)
    with pytest.raises(PrivacyBudgetExceeded) as little:
        check_budget(1.0, DELTA, 0.3, Q, 1000)
    assert "spends ε = " in str(little.value) and "no noise" not in str(little.value)


@pytest.mark.parametrize("secure", [True, False])
@pytest.mark.parametrize("std", [1.0, 2.5])
def test_gaussian_noise_has_the_asked_standard_deviation(std, secure):
    # 40,000 draws: the sample std is within ±0.4 % (one standard error) of the true one
    noise = gaussian_noise((200, 200), std, noise_generator(0, secure=False), secure=secure)
    assert abs(float(noise.std()) / std - 1) < 0.03
    assert abs(float(noise.mean())) < 0.03 * std
    assert not gaussian_noise((3,), 0.0, noise_generator(0, secure=False)).any()


def test_a_step_merges_only_with_the_last_entry_of_the_history():
    ledger = PrivacyLedger(10.0, DELTA, Q, 20, noise_multiplier=2.0)
    ledger.history = [(2.0, Q, 5), (1.0, Q, 3)]  # an earlier round ran at another sigma
    ledger.spend()
    assert ledger.history == [(2.0, Q, 5), (1.0, Q, 3), (2.0, Q, 1)]
    assert ledger.epsilon_spent() == pytest.approx(history_epsilon(ledger.history, DELTA, "rdp"))
    ledger.spend()
    assert ledger.history == [(2.0, Q, 5), (1.0, Q, 3), (2.0, Q, 2)]


def test_noise_is_secure_unless_asked_otherwise():
    # the default generator is the unrecorded one: the same seed twice gives two streams
    a, b = noise_generator(3), noise_generator(3)
    assert not torch.equal(torch.rand(8, generator=a), torch.rand(8, generator=b))
    a, b = noise_generator(3, secure=False), noise_generator(3, secure=False)
    assert torch.equal(torch.rand(8, generator=a), torch.rand(8, generator=b))
    # replayable streams of different seeds differ
    one, two = noise_generator(0, secure=False), noise_generator(1, secure=False)
    assert not torch.equal(torch.rand(8, generator=one), torch.rand(8, generator=two))


def test_gaussian_noise_takes_the_mitigated_path_by_default_and_the_plain_one_only_when_asked():
    def draw(**kw):
        return gaussian_noise((50,), 2.0, noise_generator(5, secure=False), **kw)

    plain = torch.randn((50,), generator=noise_generator(5, secure=False)) * 2.0
    assert torch.equal(draw(secure=False), plain)
    assert torch.equal(draw(), draw(secure=True))
    assert not torch.allclose(draw(secure=True), plain)


def test_a_negative_noise_multiplier_or_a_budget_of_zero_is_a_config_error():
    with pytest.raises(ConfigError, match="noise multiplier must be ≥ 0"):
        spent_epsilon(-0.5, Q, 10, DELTA)
    for epsilon in (0.0, -0.5):
        with pytest.raises(ConfigError, match="epsilon must be > 0"):
            calibrate_noise(epsilon, DELTA, Q, 10)
