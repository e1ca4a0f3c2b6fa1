"""DP-PSG: the private gradient, the privacy record, noise initialisation, budget, utility."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant

from fedistill.distill import distill, get_method
from fedistill.distill import psg as psg_module
from fedistill.distill.psg import poisson_sample, private_gradient
from fedistill.errors import ConfigError, PrivacyBudgetExceeded
from fedistill.evaluate import EvalConfig, evaluate_set
from fedistill.models import build_model
from fedistill.synthetic import SyntheticSet

TINY = {"width": 16, "iterations": 2, "outer_loop": 2, "batch_loop": 2, "inner_loop": 2}


def _clipped_mean_by_hand(model, x, y, clip, expected_batch):
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for i in range(len(x)):
        g = torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params)
        norm = torch.cat([t.flatten() for t in g]).norm()
        factor = min(1.0, clip / (float(norm) + 1e-6))
        total = [a + factor * t for a, t in zip(total, g)]
    return [a / expected_batch for a in total]


@pytest.mark.parametrize("clip", [0.05, 100.0])  # every sample clipped / none clipped
def test_private_gradient_without_noise_is_the_clipped_mean(digits_train, clip):
    torch.manual_seed(0)
    model = build_model("convnet", digits_train.info, width=16)
    x, y = digits_train.images[:12], digits_train.labels[:12]
    want = _clipped_mean_by_hand(model, x, y, clip, expected_batch=15)
    got = private_gradient(model, x, y, clip=clip, noise_multiplier=0.0, expected_batch=15)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # the plain module is handed back without Opacus's hooks or attributes
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    # a reused GradSampleModule gives the same
    gsm = GradSampleModule(model, loss_reduction="sum")
    again = private_gradient(gsm, x, y, clip=clip, noise_multiplier=0.0, expected_batch=15)
    for a, b in zip(again, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_private_gradient_noise_has_std_sigma_c_over_batch(digits_train):
    torch.manual_seed(0)
    model = build_model("convnet", digits_train.info, width=16)
    empty = digits_train.images[:0]
    gen = torch.Generator().manual_seed(1)
    out = private_gradient(
        model,
        empty,
        digits_train.labels[:0],
        clip=0.5,
        noise_multiplier=2.0,
        expected_batch=10,
        generator=gen,
    )
    flat = torch.cat([g.flatten() for g in out])
    assert flat.numel() > 5000
    assert float(flat.std()) == pytest.approx(2.0 * 0.5 / 10, rel=0.05)
    assert abs(float(flat.mean())) < 0.005


def test_poisson_sample_draws_each_example_independently():
    gen = torch.Generator().manual_seed(0)
    sizes = [len(poisson_sample(1000, 0.1, gen)) for _ in range(200)]
    assert sum(sizes) / len(sizes) == pytest.approx(100, rel=0.05)
    assert len(set(sizes)) > 10  # the batch size varies: not a fixed-size batch


def test_recorded_epsilon_equals_a_fresh_opacus_accountant(digits_train, monkeypatch):
    calls = []
    real_fn = psg_module.private_gradient

    def counting(*args, **kwargs):
        calls.append(1)
        return real_fn(*args, **kwargs)

    monkeypatch.setattr(psg_module, "private_gradient", counting)
    syn = distill("psg", digits_train, 2, seed=0, epsilon=5.0, **TINY)
    priv = syn.privacy
    cfg = get_method("psg").make_config(epsilon=5.0, **TINY)
    assert len(calls) == priv["steps"] == cfg.steps == 2 * 2 * 2  # every evaluation counted
    assert priv["sample_rate"] == pytest.approx(256 / len(digits_train))
    assert priv["clip"] == cfg.clip and priv["delta"] == 1e-5 and priv["accountant"] == "rdp"
    acc = RDPAccountant()
    for _ in range(priv["steps"]):
        acc.step(noise_multiplier=priv["noise_multiplier"], sample_rate=priv["sample_rate"])
    assert priv["epsilon"] == pytest.approx(acc.get_epsilon(delta=priv["delta"]), rel=1e-9)
    assert priv["epsilon"] <= 5.0
    # the record survives the file format
    back = SyntheticSet.from_bytes(syn.to_bytes())
    assert back.privacy == priv


def test_synthetic_images_start_from_noise_never_real(digits_train):
    with pytest.raises(ConfigError, match="noise only"):
        get_method("psg").make_config(init="real")
    syn = distill("psg", digits_train, 3, seed=0, lr_img=0.0, **TINY)  # the untouched init
    real = digits_train.images.flatten(1)
    x = syn.images.flatten(1)
    assert abs(float(x.mean())) < 0.1 and float(x.std()) == pytest.approx(1.0, rel=0.1)
    nearest = torch.cdist(x, real).min(1).values
    # real images lie far closer to each other than any synthetic image lies to a real one
    real_gap = torch.cdist(real[:200], real[200:]).min(1).values.median()
    assert float(nearest.min()) > 2 * float(real_gap)
    assert syn.labels.tolist() == [c for c in range(10) for _ in range(3)]


def test_run_over_budget_stops_before_touching_data(digits_train):
    with pytest.raises(PrivacyBudgetExceeded, match="budget"):
        distill("psg", digits_train, 2, seed=0, epsilon=1.0, noise_multiplier=0.05, **TINY)
    with pytest.raises(PrivacyBudgetExceeded, match="epsilon to inf"):
        distill("psg", digits_train, 2, seed=0, noise_multiplier=0.0, **TINY)
    # the declared non-private ablation runs and says so
    syn = distill("psg", digits_train, 1, seed=0, epsilon=math.inf, noise_multiplier=0, **TINY)
    assert math.isinf(syn.privacy["epsilon"]) and syn.privacy["noise_multiplier"] == 0


def test_batchnorm_and_bad_options_are_rejected():
    make = get_method("psg").make_config
    with pytest.raises(ConfigError, match="BatchNorm"):
        make(norm="batch")
    with pytest.raises(ConfigError):
        make(accountant="moments")
    with pytest.raises(ConfigError):
        make(clip=0.0)


def test_soft_labels_are_probability_rows(digits_train):
    syn = distill("psg", digits_train, 1, seed=0, learn_labels=True, **TINY)
    assert syn.meta["label_kind"] == "soft" and syn.labels.shape == (10, 10)
    torch.testing.assert_close(syn.labels.sum(1), torch.ones(10))
    assert (syn.hard_labels() == torch.arange(10)).float().mean() >= 0.9


def test_small_images_distil_with_two_blocks():
    assert psg_module.resolve_depth(None, 8) == 2  # 8×8 digits: a third block sees 2×2 maps
    assert psg_module.resolve_depth(None, 28) == 3
    assert psg_module.resolve_depth(4, 8) == 4


def test_psg_beats_chance_on_digits(digits_train, digits_test):
    syn = distill(
        "psg",
        digits_train,
        5,
        seed=0,
        epsilon=50.0,
        width=32,
        iterations=20,
        outer_loop=5,
        batch_loop=1,
        inner_loop=5,
        lr_img=3.0,
    )
    assert syn.privacy["epsilon"] <= 50.0 and syn.privacy["steps"] == 100
    assert syn.meta["hyperparameters"]["depth"] == 2  # the depth that ran is recorded
    res = evaluate_set(syn, digits_test, EvalConfig(epochs=50, num_models=1))
    assert res.mean > 0.4, res.accuracies  # chance is 0.10
