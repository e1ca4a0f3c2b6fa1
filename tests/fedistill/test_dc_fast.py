"""DC's fast ConvNet path (fast_logits) computes the plain network up to float rounding."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

import fedistill.distill.dc as dc
from fedistill.data import DatasetInfo
from fedistill.distill._common import init_images, seeded
from fedistill.distill.dc import ChunkedGradients, DCConfig, condense, fast_forward
from fedistill.models import build_model

# 28×28 maps pool to 14, 7 and then 3 (an odd map: its last row and column are dropped)
MNIST_LIKE = DatasetInfo("mnist-like", 10, 1, 28, 28, (0.0,), (1.0,))
RGB_ODD = DatasetInfo("rgb-odd", 10, 3, 15, 13, (0.0,) * 3, (1.0,) * 3)


@pytest.fixture(autouse=True)
def _one_thread(_two_threads):
    torch.set_num_threads(1)


@pytest.mark.parametrize(
    ("info", "norm", "depth"),
    [(MNIST_LIKE, "instance", 3), (MNIST_LIKE, "none", 3), (RGB_ODD, "instance", 2)],
)
def test_fast_logits_and_gradients_equal_the_plain_network_in_float64(info, norm, depth):
    torch.manual_seed(0)
    net = build_model("convnet", info, width=8, depth=depth, norm=norm).double().train()
    forward = fast_forward(net)
    assert forward is not None
    params = list(net.parameters())
    x = torch.randn(5, *info.shape, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 10, (5,))
    plain = torch.autograd.grad(F.cross_entropy(net(x), y), [x, *params])
    fast = torch.autograd.grad(F.cross_entropy(forward(x), y), [x, *params])
    assert torch.allclose(forward(x), net(x), rtol=1e-12, atol=1e-12)
    for a, b in zip(fast, plain, strict=True):
        # conv biases before instance norm have a zero gradient: compare on the largest one
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12 * float(plain[1].abs().max()) + 1e-15)


def test_other_networks_take_their_own_forward():
    assert fast_forward(build_model("convnet", MNIST_LIKE, width=8, norm="batch")) is None
    assert fast_forward(build_model("convnet", MNIST_LIKE, width=8, norm="group")) is None
    assert fast_forward(build_model("mlp", MNIST_LIKE)) is None


def test_chunked_fast_gradients_equal_the_plain_ones_in_float32(digits_train):
    torch.manual_seed(0)
    net = build_model("convnet", digits_train.info, width=16, depth=2)
    params = list(net.parameters())
    x, y = digits_train.images[:40], digits_train.labels[:40]
    fast = ChunkedGradients(chunk=8).start(net, params, x, y)()
    plain = ChunkedGradients(chunk=8, fast=False).start(net, params, x, y)()
    for a, b in zip(fast, plain, strict=True):
        if b.ndim > 1:  # the matched weights (biases before instance norm are rounding noise)
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * float(b.abs().max()))


def test_condense_on_the_fast_path_gives_the_plain_paths_set(digits_train, monkeypatch):
    """Two outer iterations (matching steps and inner training) with the same draws: the sets
    differ by float rounding only."""
    config = DCConfig(iterations=2, width=16, batch_real=16, outer_loop=2, inner_loop=3)
    fast = condense(digits_train, 2, config, seed=0)
    plain_grads = functools.partial(ChunkedGradients, fast=False)
    monkeypatch.setattr(dc, "ChunkedGradients", plain_grads)
    plain = condense(digits_train, 2, config, seed=0)
    diff = float((fast.images - plain.images).abs().max())
    init, _ = init_images(digits_train, 2, config.init, seeded(0))
    moved = float((plain.images - init).abs().max())
    assert moved > 1e-3  # the images did move, so the comparison is not vacuous
    # measured: diff 3.6e-7, moved 0.43; a pooling gradient planted 1.2× too large gives 0.073
    assert diff < 1e-4 * moved + 1e-6, (diff, moved)
