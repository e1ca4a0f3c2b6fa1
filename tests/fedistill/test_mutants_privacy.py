"""The privacy accounting where mutation testing found it under-tested (mutants of
fedistill/privacy.py that survived the other tests: experiments/results/mutation/privacy.txt):
what zero steps and one step spend, and when calibration needs no noise at all."""

from __future__ import annotations

import math

import pytest

from fedistill.privacy import calibrate_noise, check_budget, spent_epsilon

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
