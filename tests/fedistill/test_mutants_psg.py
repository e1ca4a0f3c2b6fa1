"""DP-PSG where mutation testing found it under-tested (mutants of fedistill/distill/psg.py that
survived the other tests: experiments/results/mutation/psg.txt): the private step drawing its
noise from a secure generator of its own when none is given, and a ledger from another run
(another sampling rate) refused, the planned steps of a run without rounds, an audit's plan, a
batch of one example."""

from __future__ import annotations

import pytest
import torch

from fedistill.distill.psg import PSGConfig, _check_ledger, plan_ledger, private_gradient
from fedistill.errors import ConfigError, PrivacyBudgetExceeded
from fedistill.models import build_model


def test_a_noisy_private_step_without_a_generator_draws_fresh_secure_noise(digits_train):
    torch.manual_seed(0)
    model = build_model("convnet", digits_train.info, width=8)
    x, y = digits_train.images[:6], digits_train.labels[:6]
    kw = {"clip": 0.1, "noise_multiplier": 1.0, "expected_batch": 6.0}
    a, b = private_gradient(model, x, y, **kw), private_gradient(model, x, y, **kw)
    assert all(torch.isfinite(t).all() for t in a)
    assert not all(torch.equal(s, t) for s, t in zip(a, b, strict=True))  # unrecorded noise


def test_a_ledger_planned_for_another_sampling_rate_is_refused():
    base = {"epsilon": 5.0, "iterations": 2, "outer_loop": 2, "batch_loop": 2}
    config = PSGConfig(public_size=500, batch_real=50, **base)
    ledger = plan_ledger(config)
    _check_ledger(ledger, config)  # its own run: accepted
    other = PSGConfig(public_size=500, batch_real=60, **base)  # q = 0.12, not 0.1
    with pytest.raises(PrivacyBudgetExceeded, match="sample_rate"):
        _check_ledger(ledger, other)


def test_a_run_without_rounds_plans_one_rounds_steps():
    config = PSGConfig(iterations=2, outer_loop=3, batch_loop=2)
    assert config.steps == 12 and config.planned_steps == 12
    assert PSGConfig(iterations=2, outer_loop=3, batch_loop=2, rounds=4).planned_steps == 48


def test_an_audit_plans_with_the_size_it_assumes_and_a_run_cannot_plan_without_one():
    config = PSGConfig(epsilon=5.0, batch_real=50, iterations=2, outer_loop=2, batch_loop=2)
    ledger = plan_ledger(config, 500)
    assert ledger.count is not None and ledger.count.estimate == 500.0
    assert ledger.sample_rate == pytest.approx(50 / 500)
    with pytest.raises(ConfigError, match="needs public_size, a DP count or a size"):
        plan_ledger(config)


def test_a_batch_of_one_example_contributes_its_clipped_gradient(digits_train):
    # Poisson sampling can draw a single example: it must count, not be taken for empty
    torch.manual_seed(0)
    model = build_model("convnet", digits_train.info, width=8)
    x, y = digits_train.images[:1], digits_train.labels[:1]
    got = private_gradient(model, x, y, clip=1e-3, noise_multiplier=0.0, expected_batch=2.0)
    norm = torch.cat([g.flatten() for g in got]).norm()
    assert float(norm) == pytest.approx(1e-3 / 2.0, rel=1e-3)  # clipped to C, over the batch


def test_a_ledger_with_another_given_sigma_is_refused_and_its_own_accepted():
    base = {"epsilon": 5.0, "public_size": 500, "batch_real": 50, "iterations": 2}
    config = PSGConfig(noise_multiplier=1.5, **base)
    ledger = plan_ledger(config)
    _check_ledger(ledger, config)
    with pytest.raises(PrivacyBudgetExceeded, match="noise_multiplier"):
        _check_ledger(ledger, PSGConfig(noise_multiplier=2.0, **base))


def test_a_private_step_draws_its_noise_from_the_generator_it_is_given(digits_train):
    from fedistill.privacy import noise_generator

    torch.manual_seed(0)
    model = build_model("convnet", digits_train.info, width=8)
    x, y = digits_train.images[:4], digits_train.labels[:4]
    kw = {"clip": 0.1, "noise_multiplier": 1.0, "expected_batch": 4.0}
    a = private_gradient(model, x, y, generator=noise_generator(7, secure=False), **kw)
    b = private_gradient(model, x, y, generator=noise_generator(7, secure=False), **kw)
    assert all(torch.equal(s, t) for s, t in zip(a, b, strict=True))  # replayed exactly


def test_a_ledger_whose_count_spent_another_share_is_refused():
    base = {"epsilon": 5.0, "batch_real": 50, "iterations": 2}
    config = PSGConfig(count_share=0.05, **base)
    ledger = plan_ledger(config, 500)
    _check_ledger(ledger, config)
    with pytest.raises(PrivacyBudgetExceeded, match="count_share"):
        _check_ledger(ledger, PSGConfig(count_share=0.2, **base))
