"""DM (distribution matching) on the embedded digits, and its fast real-branch embedding."""

from __future__ import annotations

import copy

import pytest
import torch

from fedistill.augment import DSA, default_strategy
from fedistill.distill import distill, get_method
from fedistill.distill._fast_convnet import frozen_embed, supports
from fedistill.distill.dm import DMConfig, dm_loss
from fedistill.errors import ConfigError
from fedistill.evaluate import EvalConfig, evaluate_set
from fedistill.models import ConvNet, build_model

# CPU-light budget for the tests (the defaults are the reference's: batch_real 256).
SMALL = {"batch_real": 32}
EVAL = EvalConfig(epochs=60, num_models=2, dsa=False)


@pytest.fixture(autouse=True)
def _one_thread(_two_threads):
    """Digits nets are thousands of small ops: a second thread only adds synchronisation."""
    torch.set_num_threads(1)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# --------------------------------------------------------------------------- fast embedding


@pytest.mark.parametrize(
    ("channels", "size", "norm"),
    [
        (1, (28, 28), "instance"),
        (3, (32, 32), "instance"),
        (1, (8, 8), "instance"),
        (1, (28, 28), "none"),
    ],
)
def test_fast_embed_equals_the_plain_embed(channels, size, norm):
    torch.manual_seed(0)
    net = ConvNet(channels, 10, size, width=32, norm=norm)
    x = torch.randn(37, channels, *size) * 2 + 0.5  # 37: a chunk boundary is crossed
    assert supports(net)
    with torch.no_grad():
        plain = net.embed(x)
    fast = frozen_embed(net, x, chunk=16)
    assert fast.shape == plain.shape
    assert _rel_err(fast, plain) < 1e-4


def test_fast_embed_on_parallel_workers_is_the_same_bit_for_bit():
    torch.manual_seed(0)
    net = ConvNet(1, 10, (28, 28), width=32)
    x = torch.randn(100, 1, 28, 28)
    one = frozen_embed(net, x, chunk=16)
    assert torch.equal(frozen_embed(net, x, chunk=16, workers=3), one)
    assert torch.get_num_threads() == 1  # the caller's setting is left as it was


def test_fast_embed_handles_trained_norm_parameters_and_real_digits(digits_train):
    """Negative and zero γ (possible after training) take the plain path per block."""
    torch.manual_seed(1)
    net = ConvNet(1, 10, (8, 8), width=32, depth=2)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.normal_()
                m.weight[0] = 0.0
                m.bias.normal_()
        plain = net.embed(digits_train.images[:50])
    assert _rel_err(frozen_embed(net, digits_train.images[:50]), plain) < 1e-4


def test_fast_embed_falls_back_for_other_networks():
    torch.manual_seed(0)
    x = torch.randn(6, 1, 28, 28)
    for net in (
        ConvNet(1, 10, (28, 28), width=16, norm="batch").eval(),
        build_model("mlp", _info(28), width=16),
    ):
        assert not supports(net)
        with torch.no_grad():
            assert torch.equal(frozen_embed(net, x), net.embed(x))


def _info(side: int):
    from fedistill.data import DatasetInfo

    return DatasetInfo("t", 10, 1, side, side, (0.0,), (1.0,))


# --------------------------------------------------------------------------- the method


def _expected_loss(syn, real, draws: int = 6) -> float:
    """DM loss of a set averaged over fixed random nets, real batches and DSA draws."""
    gen = torch.Generator().manual_seed(123)
    augment = DSA(default_strategy(real.info))
    k = len(syn.labels.unique())
    by_class = real.class_indices()
    total = 0.0
    for d in range(draws):
        torch.manual_seed(1000 + d)
        net = ConvNet(1, 10, (8, 8), depth=2)
        idx = torch.cat(
            [
                by_class[c][torch.randperm(len(by_class[c]), generator=gen)[:64]]
                for c in syn.labels.unique().tolist()
            ]
        )
        with torch.no_grad():
            total += float(dm_loss(net, real.images[idx], syn.images, k, augment=augment, seed=d))
    return total / draws


def test_dm_loss_falls_over_iterations(digits_train):
    start = distill("dm", digits_train, 2, seed=0, iterations=0, **SMALL)
    end = distill("dm", digits_train, 2, seed=0, iterations=40, **SMALL)
    assert torch.equal(start.labels, end.labels)
    before, after = _expected_loss(start, digits_train), _expected_loss(end, digits_train)
    assert after < 0.6 * before, (before, after)
    assert end.meta["dm_loss"]["last"] < end.meta["dm_loss"]["first"]


def test_dm_ipc1_beats_random_on_digits(digits_train, digits_test):
    """Random IPC 1 scores ≈ 0.57–0.66 on this split; DM after 60 iterations ≈ 0.80+."""
    dm = distill("dm", digits_train, 1, seed=0, iterations=60, **SMALL)
    rnd = distill("random", digits_train, 1, seed=0)
    acc_dm = evaluate_set(dm, digits_test, EVAL, seed=0).mean
    acc_rnd = evaluate_set(rnd, digits_test, EVAL, seed=0).mean
    assert acc_dm > acc_rnd + 0.08, (acc_dm, acc_rnd)


def test_same_seed_gives_the_same_set_bit_for_bit(digits_train):
    a = distill("dm", digits_train, 2, seed=3, iterations=4, **SMALL)
    b = distill("dm", digits_train, 2, seed=3, iterations=4, **SMALL)
    c = distill("dm", digits_train, 2, seed=4, iterations=4, **SMALL)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.to_bytes() == b.to_bytes()
    assert not torch.equal(a.images, c.images)


def test_the_set_does_not_depend_on_the_thread_count(digits_train):
    one = distill("dm", digits_train, 1, seed=0, iterations=3, **SMALL)
    torch.set_num_threads(2)  # two real-branch workers
    two = distill("dm", digits_train, 1, seed=0, iterations=3, **SMALL)
    assert torch.get_num_threads() == 2
    assert torch.equal(one.images, two.images)


def test_fast_and_plain_real_branch_give_the_same_set(digits_train):
    fast = distill("dm", digits_train, 1, seed=0, iterations=3, **SMALL)
    plain = distill("dm", digits_train, 1, seed=0, iterations=3, fast_embed=False, **SMALL)
    assert _rel_err(fast.images, plain.images) < 1e-4


def test_only_present_classes_are_distilled(digits_train):
    keep = torch.isin(digits_train.labels, torch.tensor([1, 4, 7]))
    part = digits_train.subset(torch.nonzero(keep, as_tuple=True)[0])
    syn = distill("dm", part, 3, seed=0, iterations=2, **SMALL)
    assert syn.labels.tolist() == [1] * 3 + [4] * 3 + [7] * 3
    assert syn.images.shape == (9, 1, 8, 8)
    assert syn.num_classes == 10 and torch.isfinite(syn.images).all()


def test_a_given_model_is_used_and_left_untouched(digits_train):
    torch.manual_seed(0)
    model = ConvNet(1, 10, (8, 8), width=32, depth=2)
    state = copy.deepcopy(model.state_dict())
    a = distill("dm", digits_train, 1, seed=0, iterations=3, model=model, **SMALL)
    b = distill(
        "dm", digits_train, 1, seed=0, iterations=3, model=model, model_perturbation=0.05, **SMALL
    )
    fresh = distill("dm", digits_train, 1, seed=0, iterations=3, **SMALL)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])
    assert all(p.requires_grad for p in model.parameters())
    assert not torch.equal(a.images, b.images)  # the perturbation changes ψ
    assert not torch.equal(a.images, fresh.images)  # ψ is the model, not a fresh ConvNet
    mlp = build_model("mlp", digits_train.info, width=32)
    assert len(distill("dm", digits_train, 1, seed=0, iterations=2, model=mlp, **SMALL)) == 10


def test_config_is_validated_and_recorded(digits_train):
    method = get_method("dm")
    assert isinstance(method.make_config(), DMConfig)
    for bad in (
        {"lr_img": 0.0},
        {"init": "zeros"},
        {"batch_real": 0},
        {"norm": "x"},
        {"dsa_strategy": "color_blur"},
        {"model_perturbation": -1.0},
        {"depth": 0},
    ):
        with pytest.raises(ConfigError):
            method.make_config(**bad)
    syn = distill("dm", digits_train, 1, seed=5, iterations=2, init="noise", **SMALL)
    meta = syn.meta
    assert (meta["method"], meta["ipc"], meta["seed"], meta["iterations"]) == ("dm", 1, 5, 2)
    assert meta["hyperparameters"]["lr_img"] == 1.0
    assert meta["hyperparameters"]["init"] == "noise"
    assert meta["hyperparameters"]["batch_real"] == 32


# --------------------------------------------------------------------------- bf16 (opt-in)


def test_bf16_real_branch_is_close_to_fp32_but_not_equal():
    """bf16 convolutions in the deeper blocks: bfloat16 keeps 8 bits of mantissa, so the
    embedding moves by ~1e-2 relative (measured here 0.5–0.7 % over 3 seeds), never by more than 5 %."""
    torch.manual_seed(0)
    net = ConvNet(1, 10, (28, 28), width=32)
    x = torch.randn(37, 1, 28, 28)
    fp32 = frozen_embed(net, x, chunk=16)
    bf16 = frozen_embed(net, x, chunk=16, precision="bf16")
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    assert 0 < _rel_err(bf16, fp32) < 0.05
    assert torch.equal(frozen_embed(net, x, chunk=16, workers=2, precision="bf16"), bf16)
    with pytest.raises(ValueError, match="precision"):
        frozen_embed(net, x, precision="fp16")


def test_dm_with_a_bf16_real_branch_still_learns_and_says_so(digits_train, digits_test):
    dm = distill("dm", digits_train, 1, seed=0, iterations=60, precision="bf16", **SMALL)
    rnd = distill("random", digits_train, 1, seed=0)
    assert dm.meta["hyperparameters"]["precision"] == "bf16"
    acc_dm = evaluate_set(dm, digits_test, EVAL, seed=0).mean
    acc_rnd = evaluate_set(rnd, digits_test, EVAL, seed=0).mean
    assert acc_dm > acc_rnd + 0.08, (acc_dm, acc_rnd)
    with pytest.raises(ConfigError, match="fast real branch"):
        DMConfig(precision="bf16", fast_embed=False).validate()
