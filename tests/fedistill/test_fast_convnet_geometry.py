"""DM's fast real-branch embedding follows both ConvNet geometries."""

import pytest
import torch

from fedistill.distill._fast_convnet import frozen_embed, supports
from fedistill.models import ConvNet


@pytest.mark.parametrize("geometry", ["reference", "compact"])
@pytest.mark.parametrize("channels", [1, 3])
def test_fast_embed_equals_the_plain_embed_in_each_geometry(geometry, channels):
    torch.manual_seed(0)
    net = ConvNet(channels, 10, (28, 28), width=32, geometry=geometry)
    x = torch.randn(37, channels, 28, 28) * 2 + 0.5
    assert supports(net)
    with torch.no_grad():
        plain = net.embed(x)
    fast = frozen_embed(net, x, chunk=16)
    assert fast.shape == plain.shape == (37, net.feature_dim)
    assert float((fast - plain).abs().max() / plain.abs().max()) < 1e-4
    assert torch.equal(frozen_embed(net, x, chunk=16, workers=2), fast)
