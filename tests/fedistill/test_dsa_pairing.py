"""DSA is *siamese*: the real and the synthetic batch of a class get the same augmentation draw.
With the synthetic set equal to the real images, each matching loss under DSA is then ≈ 0; a
method that gave the synthetic batch a draw of its own would leave a clear gap (the controls
below measure it)."""

from __future__ import annotations

import pytest
import torch

from fedistill.augment import DSA, FULL_STRATEGY
from fedistill.distill.dc import matching_loss
from fedistill.distill.dm import dm_loss
from fedistill.models import build_model

PER_CLASS = 4


@pytest.fixture(scope="module")
def tiny(digits_train):
    """``PER_CLASS`` digits of every class, grouped by class (a class's whole data is one
    batch, so DC's real batch holds exactly the synthetic images)."""
    idx = torch.cat([i[:PER_CLASS] for i in digits_train.class_indices()])
    return digits_train.subset(idx)


def _net(real, seed=0):
    torch.manual_seed(seed)
    return build_model("convnet", real.info, width=16, depth=2)


def _gradient_pairs(monkeypatch, tiny, x_syn, augment) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every (synthetic, real) gradient pair DC's matching loss compares, per layer."""
    import fedistill.distill.dc as dc

    pairs = []
    original = dc.match_loss

    def spy(g_syn, g_real):
        pairs.extend(zip(g_syn, g_real, strict=True))
        return original(g_syn, g_real)

    monkeypatch.setattr(dc, "match_loss", spy)
    classes = list(range(tiny.num_classes))
    gen = torch.Generator().manual_seed(0)
    net = _net(tiny)
    matching_loss(net, tiny, x_syn, tiny.labels, classes, PER_CLASS, PER_CLASS, gen, augment)
    return [(a.detach().flatten(), b.detach().flatten()) for a, b in pairs]


def _worst_cosine(pairs) -> float:
    return min(float(torch.nn.functional.cosine_similarity(a, b, dim=0)) for a, b in pairs)


def test_dc_under_dsa_matches_identical_gradients_when_the_synthetic_set_is_the_real_one(
    monkeypatch, tiny
):
    """(The loss itself is not 0 for identical gradients: the reference's distance has an ε in
    its denominator. So the gradients it is given are compared.)"""
    x_syn = tiny.images.clone()
    paired = _gradient_pairs(monkeypatch, tiny, x_syn, DSA())
    assert len(paired) > 0 and _worst_cosine(paired) > 1 - 1e-4  # measured 1 - 3e-7

    class Unpaired(DSA):  # the synthetic side augmented with a draw of its own
        def __call__(self, x, *, seed=None, groups=None, generator=None):
            if x._base is x_syn and seed is not None:
                seed = seed + 1
            return super().__call__(x, seed=seed, groups=groups, generator=generator)

    unpaired = _gradient_pairs(monkeypatch, tiny, x_syn, Unpaired())
    assert _worst_cosine(unpaired) < 0.9  # measured 0.14: the pairing makes them equal


def test_dm_loss_under_dsa_vanishes_when_the_synthetic_set_is_the_real_one(tiny):
    net = _net(tiny).eval()
    x = tiny.images
    k = tiny.num_classes
    for fast in (True, False):
        same = dm_loss(net, x, x.clone(), k, augment=DSA(FULL_STRATEGY), seed=7, fast=fast)
        assert float(same.detach()) < 1e-6 * float((net.embed(x) ** 2).sum()) + 1e-6
    # control: the same images with another draw on the synthetic side
    from fedistill.distill.dm import real_target, synthetic_loss

    target = real_target(net, x, k, augment=DSA(FULL_STRATEGY), seed=7, fast=False)
    shifted = type(target)(target.net, 8, target._pending)  # the synthetic side's seed moved
    apart = synthetic_loss(shifted, x.clone(), k, DSA(FULL_STRATEGY))
    assert float(apart.detach()) > 1e3 * max(float(same.detach()), 1e-9)
