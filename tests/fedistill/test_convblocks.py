"""The fused ConvNet block trains the same network as the modules, bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedistill.augment import DSA, default_strategy
from fedistill.convblocks import (
    avg_pool2,
    norm_relu_pool,
    plan,
    training_embed,
    training_forward,
)
from fedistill.data import DIGITS_INFO, DatasetInfo
from fedistill.distill._fast_convnet import single_threaded
from fedistill.evaluate import EvalConfig
from fedistill.models import ConvNet, build_model
from fedistill.trainer import train_classifier

MNIST_LIKE = DatasetInfo("mnist-like", 10, 1, 28, 28, (0.0,), (1.0,))
RGB_ODD = DatasetInfo("rgb-odd", 10, 3, 15, 13, (0.0,) * 3, (1.0,) * 3)


def _modules(z, norm, pool):
    h = z if norm is None else F.group_norm(z, norm.num_groups, norm.weight, norm.bias, norm.eps)
    h = F.relu(h)
    return F.avg_pool2d(h, 2) if pool else h


# even maps wider than SMALL_MAP (a broadcast view), even maps up to it (materialised), odd maps
@pytest.mark.parametrize(
    "shape", [(3, 8, 12, 10), (3, 8, 8, 8), (2, 4, 6, 4), (2, 5, 7, 9), (4, 6, 3, 3)]
)
@pytest.mark.parametrize("with_norm", [True, False])
@pytest.mark.parametrize("pool", [True, False])
def test_block_equals_norm_relu_pool_modules_bit_for_bit(shape, with_norm, pool):
    torch.manual_seed(0)
    norm = None
    if with_norm:
        norm = nn.GroupNorm(shape[1], shape[1])
        with torch.no_grad():  # some negative scales, so the ReLU masks differ per channel
            norm.weight.uniform_(-0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    z = torch.randn(*shape, requires_grad=True)
    upstream = torch.randn_like(_modules(z, norm, pool))
    params = [z] if norm is None else [z, norm.weight, norm.bias]
    fused, plain = norm_relu_pool(z, norm, pool), _modules(z, norm, pool)
    assert torch.equal(fused, plain)
    g_fused = torch.autograd.grad(fused, params, upstream)
    g_plain = torch.autograd.grad(plain, params, upstream)
    for a, b in zip(g_fused, g_plain, strict=True):
        assert torch.equal(a, b)


def test_pooling_is_avg_pool2d_bit_for_bit_on_odd_maps():
    h = torch.randn(2, 3, 9, 6)
    assert torch.equal(avg_pool2(h), F.avg_pool2d(h, 2))


@pytest.mark.parametrize(
    ("info", "kwargs"),
    [
        (MNIST_LIKE, {"geometry": "reference"}),
        (MNIST_LIKE, {"geometry": "compact"}),  # 28 → 14 → 7 → 3: an odd map is pooled
        (MNIST_LIKE, {"norm": "none"}),
        (RGB_ODD, {"depth": 2}),
    ],
)
def test_training_forward_gives_the_networks_logits_and_gradients_bit_for_bit(info, kwargs):
    torch.manual_seed(0)
    net = build_model("convnet", info, width=16, **kwargs).train()
    forward = training_forward(net)
    assert forward is not net
    x = torch.randn(6, *info.shape, requires_grad=True)
    y = torch.randint(0, 10, (6,))
    params = [x, *net.parameters()]
    fast = torch.autograd.grad(F.cross_entropy(forward(x), y), params)
    plain = torch.autograd.grad(F.cross_entropy(net(x), y), params)
    for a, b in zip(fast, plain, strict=True):
        assert torch.equal(a, b)


def test_training_embed_gives_the_embedding_and_its_input_gradient_bit_for_bit():
    torch.manual_seed(0)
    net = build_model("convnet", MNIST_LIKE, width=16).train()
    for p in net.parameters():  # DM's frozen ψ: only the images get gradients
        p.requires_grad_(False)
    embed = training_embed(net)
    assert embed != net.embed
    x = torch.randn(5, 1, 28, 28, requires_grad=True)
    upstream = torch.randn(5, net.embed(x).shape[1])
    fast, plain = embed(x), net.embed(x)
    assert torch.equal(fast, plain)
    assert torch.equal(*(torch.autograd.grad((e * upstream).sum(), x)[0] for e in (fast, plain)))
    hooked = build_model("convnet", MNIST_LIKE, width=8)
    hooked.features[1].register_forward_hook(lambda *a: None)
    assert training_embed(hooked) == hooked.embed
    mlp = build_model("mlp", MNIST_LIKE)
    assert training_embed(mlp) == mlp.embed


def test_bf16_autocast_takes_the_same_path_as_the_modules():
    torch.manual_seed(0)
    net = build_model("convnet", MNIST_LIKE, width=16).train()
    forward = training_forward(net)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    grads = []
    for f in (forward, net):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(f(x), y).float()
        grads.append(torch.autograd.grad(loss, list(net.parameters())))
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)


class _OwnForward(ConvNet):
    def forward(self, x):
        return super().forward(x) * 2


def test_other_networks_train_through_their_own_forward():
    for norm in ("batch", "group"):
        net = build_model("convnet", MNIST_LIKE, width=8, norm=norm)
        assert plan(net) is None and training_forward(net) is net
    mlp = build_model("mlp", MNIST_LIKE)
    assert training_forward(mlp) is mlp
    own = _OwnForward(1, 10, (28, 28), width=8)
    assert training_forward(own) is own
    hooked = build_model("convnet", MNIST_LIKE, width=8)
    hooked.features[1].register_forward_hook(lambda *a: None)  # e.g. a per-sample-grad hook
    assert training_forward(hooked) is hooked


def test_second_order_gradients_are_refused_not_silently_wrong():
    net = build_model("convnet", MNIST_LIKE, width=8)
    x = torch.randn(2, 1, 28, 28, requires_grad=True)
    loss = training_forward(net)(x).square().sum()
    with pytest.raises(RuntimeError, match="second-order"):
        torch.autograd.grad(loss, [net.features[4].weight], create_graph=True)


def test_trainer_trajectory_is_the_plain_one_bit_for_bit(digits_train):
    idx = torch.cat([torch.nonzero(digits_train.labels == c)[:10, 0] for c in range(10)])
    x, y = digits_train.images[idx], digits_train.labels[idx]
    cfg = EvalConfig(epochs=4, batch_size=64)
    augment = DSA(default_strategy(DIGITS_INFO))
    trained = []
    for fast in (True, False):
        torch.manual_seed(3)
        model = build_model("convnet", DIGITS_INFO, width=32)
        gen = torch.Generator().manual_seed(3)
        with single_threaded():
            train_classifier(model, x, y, cfg, augment=augment, generator=gen, chunk=16, fast=fast)
        trained.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(trained[0], trained[1])
    assert not torch.equal(trained[0], trained[0] * 0)  # it trained at all
