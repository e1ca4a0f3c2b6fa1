import pytest
import torch

from fedistill.data import CIFAR10_INFO, DIGITS_INFO, MNIST_INFO
from fedistill.errors import UnknownNameError
from fedistill.models import ConvNet, build_model


@pytest.mark.parametrize("info", [DIGITS_INFO, MNIST_INFO, CIFAR10_INFO], ids=lambda i: i.name)
@pytest.mark.parametrize("name", ["convnet", "mlp", "lenet", "resnet18"])
def test_models_adapt_to_channels_and_size(name, info):
    torch.manual_seed(0)
    model = build_model(name, info)
    x = torch.randn(2, *info.shape)
    out = model(x)
    assert out.shape == (2, info.num_classes) and torch.isfinite(out).all()
    assert model.embed(x).shape == (2, model.feature_dim)


def test_convnet_feature_dims_follow_pooling():
    assert ConvNet(1, 10, (28, 28), geometry="compact").feature_dim == 128 * 3 * 3
    assert ConvNet(1, 10, (28, 28)).feature_dim == 128 * 4 * 4  # the reference: as 32×32
    assert ConvNet(3, 10, (32, 32)).feature_dim == 128 * 4 * 4
    assert ConvNet(1, 10, (8, 8)).feature_dim == 128  # pooling stops at 1×1
    assert ConvNet(1, 10, (28, 28), width=64, depth=2, geometry="compact").feature_dim == 64 * 7 * 7
    assert ConvNet(1, 10, (28, 28), width=64, depth=2).feature_dim == 64 * 8 * 8


@pytest.mark.parametrize("norm", ["instance", "group", "batch", "none"])
def test_convnet_norms(norm):
    m = ConvNet(1, 10, (28, 28), norm=norm)
    assert m(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_instance_norm_normalises_each_sample_and_channel():
    m = ConvNet(1, 10, (28, 28), depth=1, norm="instance")
    h = m.features[1](m.features[0](torch.randn(4, 1, 28, 28) * 5 + 3))
    assert torch.allclose(h.mean(dim=(2, 3)), torch.zeros(4, 128), atol=1e-4)


def test_unknown_model_or_norm():
    with pytest.raises(UnknownNameError):
        build_model("vit", DIGITS_INFO)
    with pytest.raises(UnknownNameError):
        ConvNet(1, 10, (28, 28), norm="layer")


def test_convnet_learns_digits(digits_train, digits_test):
    from fedistill.evaluate import EvalConfig, accuracy, train_classifier

    torch.manual_seed(0)
    model = build_model("convnet", DIGITS_INFO, width=32)
    train_classifier(
        model,
        digits_train.images,
        digits_train.labels,
        EvalConfig(epochs=8, batch_size=32),
        generator=torch.Generator().manual_seed(0),
    )
    assert accuracy(model, digits_test) > 0.85


# --------------------------------------------------------------------------- geometry


def _reference_arithmetic(channels, side, width, depth):
    """networks.py of VICO-UoE/DatasetCondensation: a 28-px input counts as 32×32 and the
    first convolution of a 1-channel net pads by 3; 3×3 convs, 2×2 average pooling."""
    size = 32 if side == 28 else side
    maps = []
    for d in range(depth):
        pad = 3 if channels == 1 and d == 0 else 1
        side = side + 2 * pad - 2
        maps.append(side)
        side //= 2
    assert side == size // 2**depth  # the reference's own bookkeeping (shape_feat) agrees
    return maps, width * side * side


def test_reference_geometry_matches_the_reference_on_mnist():
    maps, features = _reference_arithmetic(1, 28, 128, 3)
    assert maps == [32, 16, 8] and features == 2048
    m = ConvNet(1, 10, (28, 28), geometry="reference")
    assert m.map_sizes == [(s, s) for s in maps] and m.feature_dim == features
    assert m.features[0].padding == (3, 3)
    assert [c.padding for c in m.features if isinstance(c, torch.nn.Conv2d)][1:] == [(1, 1)] * 2
    x = torch.randn(2, 1, 28, 28)
    h = x
    seen = []
    for layer in m.features:
        h = layer(h)
        if isinstance(layer, torch.nn.Conv2d):
            seen.append(h.shape[-1])
    assert seen == maps and m.embed(x).shape == (2, 2048) and m(x).shape == (2, 10)
    assert build_model("convnet", MNIST_INFO, geometry="reference").feature_dim == 2048


def test_compact_geometry_stays_selectable_and_other_sizes_agree():
    m = ConvNet(1, 10, (28, 28), geometry="compact")
    assert m.map_sizes == [(28, 28), (14, 14), (7, 7)] and m.feature_dim == 1152
    for channels, size in ((3, (32, 32)), (1, (8, 8))):
        a = ConvNet(channels, 10, size, geometry="compact")
        b = ConvNet(channels, 10, size, geometry="reference")
        assert a.map_sizes == b.map_sizes and a.feature_dim == b.feature_dim
    assert ConvNet(3, 10, (32, 32), geometry="reference").feature_dim == 2048
    assert ConvNet(1, 10, (28, 28), width=64, depth=2, geometry="reference").map_sizes == [
        (32, 32),
        (16, 16),
    ]
    with pytest.raises(UnknownNameError):
        ConvNet(1, 10, (28, 28), geometry="wide")


def test_the_default_convnet_is_the_references_on_mnist():
    import fedistill.models as models

    assert models.DEFAULT_GEOMETRY == "reference"
    m = build_model("convnet", MNIST_INFO)
    assert m.geometry == "reference" and m.feature_dim == 2048
    assert m.map_sizes == [(32, 32), (16, 16), (8, 8)]
