"""The engine's own defences: the plausible-range check on uploaded images, valid privacy
facts, and FedAvg weights an inflated example count cannot capture."""

from __future__ import annotations

import math

import pytest
import torch

from fedistill.errors import ConfigError, SyntheticSetError
from fedistill.evaluate import EvalConfig
from fedistill.federated import (
    check_client_set,
    client_distill,
    fedavg_weights,
    plausible_range,
    simulate_fedavg,
    simulate_feddm,
)
from fedistill.synthetic import SyntheticSet

FAST = EvalConfig(epochs=30, num_models=1, lr=0.05, batch_size=64, dsa=False, model="mlp")


def test_plausible_range_contains_the_pixel_range_and_scales_with_the_margin(digits_train):
    info = digits_train.info
    lo0, hi0 = plausible_range(info, 0.0)
    assert lo0 == pytest.approx(-info.mean[0] / info.std[0])
    assert hi0 == pytest.approx((1 - info.mean[0]) / info.std[0])
    lo, hi = plausible_range(info)
    assert lo < lo0 - 10 and hi > hi0 + 10 and hi < 1e3
    with pytest.raises(ConfigError):
        plausible_range(info, -1.0)


def test_huge_finite_images_are_refused_honest_ones_kept(digits_train):
    info = digits_train.info
    honest = client_distill(digits_train, "random", 3, seed=0)
    check_client_set(honest, info, max_ipc=3)  # real images: inside
    huge = SyntheticSet(torch.full_like(honest.images, 1e30), honest.labels, dict(honest.meta))
    with pytest.raises(SyntheticSetError, match="outside the plausible range"):
        check_client_set(huge, info, max_ipc=3)
    negative = SyntheticSet(honest.images - 1e3, honest.labels, dict(honest.meta))
    with pytest.raises(SyntheticSetError, match="outside the plausible range"):
        check_client_set(negative, info, max_ipc=3)


@pytest.mark.parametrize(
    ("privacy", "reason"),
    [
        ({"epsilon": -5.0, "delta": 1e-5}, "epsilon"),
        ({"epsilon": 1.0, "delta": 1.0}, "delta"),
        ({"epsilon": float("nan")}, "number"),
        ({"rho": -0.1}, "rho"),
    ],
)
def test_impossible_privacy_facts_are_refused(digits_train, privacy, reason):
    honest = client_distill(digits_train, "random", 2, seed=0)
    lying = SyntheticSet(honest.images, honest.labels, dict(honest.meta, privacy=privacy))
    with pytest.raises(SyntheticSetError, match=reason):
        check_client_set(lying, digits_train.info)
    ok = SyntheticSet(
        honest.images, honest.labels, dict(honest.meta, privacy={"epsilon": 2.0, "delta": 1e-5})
    )
    check_client_set(ok, digits_train.info)


def test_plain_feddm_drops_a_1e30_reply_with_its_reason(digits_train, digits_test):
    def set_tamper(cid, syn):
        if cid != 1:
            return syn
        return SyntheticSet(torch.full_like(syn.images, 1e30), syn.labels, dict(syn.meta))

    res = simulate_feddm(
        digits_train,
        digits_test,
        num_clients=5,
        method="random",
        ipc=5,
        eval_cfg=FAST,
        partitioner="iid",
        set_tamper=set_tamper,
    )
    assert 1 not in res.kept and "plausible range" in res.rejected[1]
    assert res.kept == [0, 2, 3, 4]
    assert res.accuracy > 0.7  # the pooled model is unharmed


def test_fedavg_weights_clip_an_inflated_count_to_the_median():
    honest = [120.0, 80.0, 150.0, 100.0]
    w = fedavg_weights([*honest, 1e18])
    assert w[-1] <= max(w[:-1]) and w[-1] == pytest.approx(120.0)
    assert w[:4] == [120.0, 80.0, 120.0, 100.0]  # above-median honest counts lose the excess
    assert fedavg_weights([*honest, 1e18], "uniform") == [1.0] * 5
    assert fedavg_weights([*honest, 1e18], "reported")[-1] == 1e18
    with pytest.raises(ConfigError):
        fedavg_weights([1.0, -3.0])
    with pytest.raises(ConfigError):
        fedavg_weights([1.0, math.inf])
    with pytest.raises(ConfigError):
        fedavg_weights([1.0], "bogus")


def _shift(digits_train, digits_test, *, count, weighting):
    """How far one round of FedAvg moves towards client 0's update when client 0 adds +1 to
    every parameter and reports ``count`` examples (1.0: the global model is client 0's)."""

    def update_tamper(cid, state):
        return {k: v + 1.0 if cid == 0 and v.is_floating_point() else v for k, v in state.items()}

    kw = dict(
        num_clients=5,
        partitioner="iid",
        rounds=1,
        local_epochs=1,
        model="mlp",
        model_kwargs={"width": 16},
        weighting=weighting,
    )
    honest = simulate_fedavg(digits_train, digits_test, **kw)
    attacked = simulate_fedavg(
        digits_train,
        digits_test,
        update_tamper=update_tamper,
        count_tamper=(lambda cid, n: count if cid == 0 else n) if count is not None else None,
        **kw,
    )
    a, h = attacked.model.state_dict(), honest.model.state_dict()
    diffs = torch.cat([(a[k] - h[k]).flatten() for k in a if a[k].is_floating_point()])
    return float(diffs.mean()), attacked


def test_an_inflated_count_moves_fedavg_no_more_than_an_honest_client(digits_train, digits_test):
    # iid: 5 clients of 252 or 253 examples; an honest-count attacker carries 1/5 of the mean
    honest_shift, _ = _shift(digits_train, digits_test, count=None, weighting="clipped")
    assert honest_shift == pytest.approx(0.2, abs=0.01)
    inflated_shift, res = _shift(digits_train, digits_test, count=1e18, weighting="clipped")
    assert inflated_shift <= honest_shift + 1e-3
    assert (
        res.clients[0]["num_examples"] == 1e18
        and "num_examples" in res.clients[0]["client_reported"]
    )
    # positive control: trusting the reported count hands the model to the attacker
    captured, _ = _shift(digits_train, digits_test, count=1e18, weighting="reported")
    assert captured > 0.99
