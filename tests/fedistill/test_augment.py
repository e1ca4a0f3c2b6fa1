import pytest
import torch

from fedistill.augment import ALL_OPS, DSA, default_strategy, parse_strategy
from fedistill.data import CIFAR10_INFO, DIGITS_INFO


def test_default_strategy_has_no_flip_for_digits():
    assert "flip" not in default_strategy(DIGITS_INFO)
    assert "flip" in default_strategy(CIFAR10_INFO)


def test_bad_strategy_rejected():
    with pytest.raises(ValueError, match="bad DSA strategy"):
        parse_strategy("color_warp")


@pytest.mark.parametrize("op", ALL_OPS)
def test_each_op_is_differentiable_and_changes_images(op):
    x = torch.randn(8, 3, 16, 16, requires_grad=True)
    outs = [DSA(op)(x, seed=s) for s in range(6)]
    assert all(o.shape == x.shape for o in outs)
    assert any(not torch.allclose(o, x) for o in outs)  # some draw must change the batch
    sum(o.sum() for o in outs).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_siamese_same_seed_same_transform_for_real_and_synthetic():
    aug = DSA("color_crop_cutout_scale_rotate")
    real = torch.randn(6, 1, 28, 28)
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    for seed in range(10):
        both = aug(torch.cat([real, real]), seed=seed, groups=torch.cat([groups, groups]))
        alone = aug(real, seed=seed, groups=groups)
        assert torch.allclose(both[:6], alone, atol=1e-6)
        assert torch.allclose(both[:6], both[6:], atol=1e-6)


def test_groups_share_a_draw_and_differ_across_groups():
    aug = DSA("rotate")
    img = torch.randn(1, 1, 28, 28).repeat(4, 1, 1, 1)
    out = aug(img, seed=5, groups=torch.tensor([0, 0, 1, 1]))
    assert torch.allclose(out[0], out[1]) and torch.allclose(out[2], out[3])
    assert not torch.allclose(out[0], out[2])


def test_per_sample_mode_draws_independently():
    img = torch.randn(1, 1, 28, 28).repeat(16, 1, 1, 1)
    out = DSA("scale")(img, generator=torch.Generator().manual_seed(0))
    assert len({round(float(o.sum()), 4) for o in out}) > 8
