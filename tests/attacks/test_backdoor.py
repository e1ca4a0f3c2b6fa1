"""Backdoors: trigger stamping, NAIVE on real data, DOORPING's optimised trigger."""

from __future__ import annotations

import pytest
import torch

from attacks.backdoor import (
    attack_success_rate,
    backdoor_metrics,
    evaluate_backdoor,
    poison,
    run_real_backdoor,
    summarise_models,
)
from attacks.triggers import patch_mask, pixel_range, random_trigger, white_trigger
from fedistill.data import DIGITS_INFO, MNIST_INFO
from fedistill.errors import ConfigError
from fedistill.evaluate import EvalConfig
from fedistill.models import build_model

# fast training on 8×8 digits: an MLP (a narrow ConvNet at these budgets sometimes stalls on
# the majority class of poisoned data), no augmentation
REAL_CFG = EvalConfig(epochs=15, num_models=1, lr=0.05, batch_size=64, dsa=False, model="mlp")
SYN_CFG = EvalConfig(
    epochs=100, num_models=1, lr=0.05, batch_size=256, dsa=False, model_kwargs={"width": 32}
)


def test_patch_is_a_bottom_right_square_scaled_with_the_image():
    m28 = patch_mask(MNIST_INFO)
    assert m28.sum() == 9 and m28[0, 24:27, 24:27].all() and m28[0, 27].sum() == 0
    m8 = patch_mask(DIGITS_INFO)
    assert m8.sum() == 4 and m8[0, 6:, 6:].all()
    with pytest.raises(ValueError):
        patch_mask(DIGITS_INFO, size=9)
    lo, hi = pixel_range(DIGITS_INFO)
    assert torch.allclose(white_trigger(DIGITS_INFO).patch_values(), hi.flatten().expand(1, 4))
    t = random_trigger(DIGITS_INFO, torch.Generator().manual_seed(0))
    assert (t.patch_values() >= lo.flatten()).all() and (t.patch_values() <= hi.flatten()).all()


def test_poison_stamps_and_relabels_exactly_the_chosen_fraction(digits_train):
    trigger = white_trigger(digits_train.info)
    poisoned, idx = poison(digits_train, trigger, 0.1, target=3, seed=0)
    assert len(idx) == 126 and len(set(idx.tolist())) == 126
    assert (poisoned.labels[idx] == 3).all()
    changed = (poisoned.images != digits_train.images).flatten(1).any(1)
    assert set(torch.nonzero(changed).flatten().tolist()) <= set(idx.tolist())
    inside = trigger.mask[0].bool()
    assert torch.allclose(poisoned.images[idx][:, :, inside], trigger.pattern[:, inside])
    rest = torch.ones(len(digits_train), dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(poisoned.labels[rest], digits_train.labels[rest])
    with pytest.raises(ConfigError):
        poison(digits_train, trigger, 1.5, target=0)
    with pytest.raises(ConfigError):
        poison(digits_train, trigger, 0.1, target=10)


def test_naive_backdoor_with_p_1_on_a_clients_real_data_succeeds(digits_train, digits_test):
    # one client in five (20% of the data) stamps and relabels all of its images (p = 1.0)
    out = run_real_backdoor(
        digits_train, digits_test, p=1.0, fraction=0.2, target=0, eval_cfg=REAL_CFG
    )
    assert out["poisoned"] == 252
    assert out["attacked"]["asr"] > 0.9
    assert out["attacked"]["clean_accuracy"] > 0.8  # the backdoor is stealthy
    assert out["baseline"]["asr"] < 0.1  # a clean model does not map the patch to the target


def test_attack_success_rate_counts_only_non_target_images(digits_test):
    model = build_model("mlp", digits_test.info)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.arange(10.0) == 4)  # always predicts class 4
    trigger = white_trigger(digits_test.info)
    assert attack_success_rate(model, digits_test, trigger, target=4) == 1.0
    assert attack_success_rate(model, digits_test, trigger, target=2) == 0.0


def test_backdoor_metrics_separate_a_backdoor_from_a_model_that_says_target_anyway(digits_test):
    trigger = white_trigger(digits_test.info)
    biased = build_model("mlp", digits_test.info)
    with torch.no_grad():
        biased.classifier.weight.zero_()
        biased.classifier.bias.copy_(torch.arange(10.0) == 4)  # "target" for every image
    m = backdoor_metrics(biased, digits_test, trigger, target=4)
    # an ASR of 1.0 that means nothing: the same model says 4 for clean images too
    assert m["asr"] == 1.0 and m["clean_target_rate"] == 1.0
    assert m["clean_accuracy"] == pytest.approx(float((digits_test.labels == 4).float().mean()))
    s = summarise_models([m, dict(m, asr=0.5)], [0, 1])
    assert s["asr"] == 0.75 and s["asr_std"] == pytest.approx(0.35355, abs=1e-4)
    assert s["num_models"] == 2 and s["asr_above_clean"] == pytest.approx(-0.25)


def test_evaluate_backdoor_reports_three_figures_per_seed(digits_train, digits_test):
    trigger = white_trigger(digits_train.info)
    poisoned, _ = poison(digits_train, trigger, 0.3, target=0, seed=0)
    cfg = EvalConfig(epochs=8, num_models=3, lr=0.05, batch_size=64, dsa=False, model="mlp")
    out = evaluate_backdoor(
        poisoned.images, poisoned.labels, digits_train.info, digits_test, trigger, 0, cfg
    )
    assert out["num_models"] == 3 and len(set(out["model_seeds"])) == 3
    for key in ("asr", "clean_target_rate", "clean_accuracy"):
        assert 0 <= out[key] <= 1 and out[f"{key}_std"] >= 0
    assert out["asr"] > 0.8 and out["clean_target_rate"] < 0.1  # a real backdoor
    assert out["clean_accuracy"] > 0.8
