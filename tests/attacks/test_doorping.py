"""DOORPING's mechanics: neuron selection, the activation-raising trigger update, the update
inside DM's and DC's outer loops, the controls; and, at a small budget, that the optimised
trigger beats its random-trigger control and NAIVE by the issue's margin (the benchmark at
the full budget: ``experiments/bench_doorping.py``)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from attacks.backdoor import run_backdoor
from attacks.doorping import (
    DoorpingConfig,
    black_image,
    doorping,
    select_neurons,
    update_trigger_neurons,
)
from attacks.triggers import pixel_range, random_trigger
from fedistill.errors import ConfigError
from fedistill.evaluate import EvalConfig
from fedistill.models import build_model

SMALL = {"width": 16, "norm": "none"}


def test_neuron_selection_and_the_activation_raising_trigger_update(digits_train):
    info = digits_train.info
    torch.manual_seed(0)
    model = build_model("mlp", info, width=32)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.weight[:, 5] = 1.0  # unit 5 has the strongest connections
        model.classifier.weight[:, 9] = -0.5
    assert select_neurons(model, 2).tolist() == [5, 9]
    trigger = random_trigger(info, torch.Generator().manual_seed(0), size=3)
    before = [p.detach().clone() for p in model.parameters()]
    for clamp in (True, False):
        new, upd = update_trigger_neurons(
            trigger, model, info, topk=1, alpha=3.0, steps=300, clamp=clamp
        )
        assert upd["neurons"] == [5]
        # the unit, fed the patch on a black image, was driven up towards 3 × its first value
        x = black_image(info) * (1 - new.mask) + new.pattern * new.mask
        with torch.no_grad():
            reached = float(model.embed(x.unsqueeze(0))[0, 5])
        assert reached == pytest.approx(upd["activation"], abs=1e-4)
        assert reached > upd["activation_before"] + 0.1, upd
        assert torch.equal(new.mask, trigger.mask)
        outside = ~new.mask.bool().expand_as(new.pattern)
        assert (new.pattern[outside] == 0).all()  # only the patch moves
        if clamp:  # a valid image
            lo, hi = pixel_range(info)
            assert (new.patch_values() >= lo.flatten() - 1e-6).all()
            assert (new.patch_values() <= hi.flatten() + 1e-6).all()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.requires_grad for p in model.parameters())


def test_config_is_validated():
    for bad in (
        {"alpha": 0},
        {"trigger_input": "sideways"},
        {"loop": "kip"},
        {"outer_loop": 0},
        {"patch_size": 0},
        {"cost_threshold": float("nan")},
    ):
        with pytest.raises(ConfigError):
            DoorpingConfig(**bad).validate()
    dc = DoorpingConfig(loop="dc", epochs=3, outer_loop=4, inner_loop=1)
    assert dc.trigger_updates(10) == 9 and dc.iterations == 3 and not dc.use_dsa()
    dm = DoorpingConfig(loop="dm", epochs=2, dm_iterations=5, trigger_every=2)
    assert dm.trigger_updates(10) == 5 and dm.use_dsa() and dm.image_lr() == 1.0
    assert dataclasses.replace(dm, update_trigger=False).trigger_updates(10) == 0


@pytest.mark.parametrize("loop", ["dm", "dc"])
def test_the_trigger_is_updated_inside_the_loop_and_the_poisoned_images_follow(digits_train, loop):
    cfg = DoorpingConfig(
        loop=loop,
        epochs=2,
        dm_iterations=3,
        outer_loop=3,
        inner_loop=2,
        model_kwargs=SMALL,
        trigger_steps=20,
    )
    res = doorping(digits_train, 2, p=0.02, target=3, config=cfg, seed=1)
    n = int(0.02 * len(digits_train))
    assert len(res.poisoned_indices) == n and res.updates == cfg.trigger_updates(2) > 0
    assert res.trigger_change > 0.05  # the patch moved
    assert res.syn.images.shape == (20, *digits_train.info.shape)
    assert res.syn.meta["method"] == f"doorping-{loop}"
    assert torch.isfinite(res.syn.images).all()
    # the control: the same loop, the patch never moved, the same poisoned images
    ctrl = doorping(
        digits_train,
        2,
        p=0.02,
        target=3,
        config=dataclasses.replace(cfg, update_trigger=False),
        seed=1,
    )
    assert ctrl.updates == 0 and ctrl.trigger_change == 0.0
    assert torch.equal(ctrl.poisoned_indices, res.poisoned_indices)
    assert torch.equal(ctrl.initial_trigger.pattern, res.initial_trigger.pattern)
    assert not torch.equal(ctrl.syn.images, res.syn.images)  # the updates reached the set


@pytest.mark.slow
def test_run_backdoor_reports_doorping_beside_its_controls(digits_train, digits_test):
    cfg = DoorpingConfig(loop="dm", epochs=1, dm_iterations=4, model_kwargs=SMALL, trigger_steps=10)
    ecfg = EvalConfig(
        epochs=5, num_models=3, lr=0.01, batch_size=256, dsa=False, model_kwargs=SMALL
    )
    out = run_backdoor(
        digits_train,
        digits_test,
        kind="doorping",
        ipc=1,
        p=0.05,
        target=0,
        eval_cfg=ecfg,
        doorping_config=cfg,
        controls=True,
    )
    assert out["method"] == "doorping-dm" and out["trigger_updates"] == 4
    for key in ("attacked", "random_trigger", "naive", "baseline"):
        assert out[key]["num_models"] == 3 and "clean_target_rate" in out[key]
    # NAIVE in the same loop is the white patch of the same geometry
    assert out["naive"]["trigger"]["rows"] == out["trigger"]["rows"]
    assert out["random_trigger"]["trigger"]["values"] == out["initial_trigger"]["values"]


@pytest.mark.slow  # ~65 s at load 10 on 2 cores
def test_doorping_beats_a_random_trigger_and_naive_at_the_same_poison_rate(
    digits_train, digits_test
):
    """The issue's target at a stated small budget: digits, IPC 10, p = 0.01 (12 poisoned
    images), DM loop of 60 iterations (one trigger update each, ≤ 1000 Adam steps), ConvNet-32
    without norm, 2 final models × 100 epochs. Measured here: DOORPING 100 %, random trigger
    0 %, NAIVE 0 %, clean pipeline 0 % (1 model). The trigger is unclamped, as in the reference
    code: its values leave the pixel range (checked below) — the published attack, not a
    physically valid patch; ``clamp=True`` keeps it valid."""
    net = {"width": 32, "norm": "none"}
    cfg = DoorpingConfig(loop="dm", epochs=1, dm_iterations=60, model_kwargs=net)
    ecfg = EvalConfig(
        epochs=100,
        num_models=2,
        lr=0.01,
        batch_size=256,
        dsa=False,
        model_kwargs=net | {"depth": 2},
    )
    out = run_backdoor(
        digits_train,
        digits_test,
        kind="doorping",
        ipc=10,
        p=0.01,
        target=0,
        eval_cfg=ecfg,
        doorping_config=cfg,
        controls=True,
    )
    asr = out["attacked"]["asr"]
    assert asr >= out["random_trigger"]["asr"] + 0.20, out
    assert asr >= out["naive"]["asr"] + 0.20, out
    assert out["baseline"]["asr"] < 0.2  # the clean pipeline does not carry the trigger
    lo, hi = pixel_range(digits_train.info)
    values = torch.tensor(out["trigger"]["values"])
    assert values.min() < lo or values.max() > hi  # unclamped: outside the valid pixels
