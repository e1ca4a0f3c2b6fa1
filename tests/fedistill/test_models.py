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
    assert ConvNet(1, 10, (28, 28)).feature_dim == 128 * 3 * 3
    assert ConvNet(3, 10, (32, 32)).feature_dim == 128 * 4 * 4
    assert ConvNet(1, 10, (8, 8)).feature_dim == 128  # pooling stops at 1×1
    assert ConvNet(1, 10, (28, 28), width=64, depth=2).feature_dim == 64 * 7 * 7


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
