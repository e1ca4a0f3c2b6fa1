"""Networks used to distill and to evaluate synthetic sets.

* :class:`ConvNet` — the dataset-distillation literature's ConvNet (Zhao et al. 2021): ``depth``
  blocks of 3×3 conv (``width`` channels) → norm → ReLU → 2×2 average pooling, then a linear
  classifier. ``norm="instance"`` is GroupNorm with one group per channel (affine), as in the
  reference code. Works on 1 or 3 channels and 8×8 to 32×32 inputs. ``geometry`` picks how a
  28×28 input is laid out (:data:`GEOMETRIES`): ``"reference"`` is the reference code's
  (``networks.py`` of VICO-UoE/DatasetCondensation: the first convolution pads by 3, so maps go
  32→16→8→4 and ConvNet-128-3 has 128·4·4 = 2,048 features); ``"compact"`` pads every
  convolution by 1 (28→14→7→3, 1,152 features). Other sizes are the same in both.
  :data:`DEFAULT_GEOMETRY` is what a ConvNet gets when none is named.
* :class:`MLP`, :class:`LeNet` and a small-image :class:`ResNet18` for cross-architecture checks.

Every model exposes ``embed(x)`` (the features before the classifier) and ``forward(x)``.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

from fedistill.data import DatasetInfo
from fedistill.errors import ConfigError, UnknownNameError

NORMS = ("instance", "group", "batch", "none")
GEOMETRIES = ("compact", "reference")
# The reference's layout (DESIGN.md's evaluation protocol). Benchmarks record the geometry they
# ran on; README tables measured before this default changed say "compact" beside them.
DEFAULT_GEOMETRY = "reference"
# The reference treats a 28×28 input as 32×32: its first convolution pads by this much.
REFERENCE_PAD_28 = 3


def first_padding(geometry: str, image_size: tuple[int, int]) -> int:
    """Padding of a ConvNet's first 3×3 convolution for ``image_size`` under ``geometry``."""
    if geometry not in GEOMETRIES:
        raise UnknownNameError(
            f"unknown ConvNet geometry '{geometry}'; choose one of {', '.join(GEOMETRIES)}"
        )
    if geometry == "reference" and tuple(image_size) == (28, 28):
        return REFERENCE_PAD_28
    return 1


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(4, channels), channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise UnknownNameError(f"unknown norm '{kind}'; choose one of {', '.join(NORMS)}")


class ConvNet(nn.Module):
    """ConvNet-``width``-``depth`` with the given norm, ReLU and average pooling."""

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        width: int = 128,
        depth: int = 3,
        norm: str = "instance",
        geometry: str | None = None,
    ) -> None:
        super().__init__()
        self.geometry = geometry or DEFAULT_GEOMETRY
        pad = first_padding(self.geometry, image_size)
        layers: list[nn.Module] = []
        c, h, w = channels, image_size[0], image_size[1]
        self.map_sizes: list[tuple[int, int]] = []  # each block's conv output (H, W)
        for _ in range(depth):
            layers += [nn.Conv2d(c, width, 3, padding=pad), make_norm(norm, width), nn.ReLU()]
            c, h, w = width, h + 2 * pad - 2, w + 2 * pad - 2
            self.map_sizes.append((h, w))
            pad = 1
            if h >= 2 and w >= 2:  # stop pooling once the map is 1×1 (8×8 digits, deep nets)
                layers.append(nn.AvgPool2d(2, 2))
                h, w = h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.feature_dim = c * h * w
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


class MLP(nn.Module):
    """Two hidden ReLU layers of ``width`` units on the flattened image."""

    def __init__(
        self, channels: int, num_classes: int, image_size: tuple[int, int], width: int = 128
    ):
        super().__init__()
        d = channels * image_size[0] * image_size[1]
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(d, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()
        )
        self.feature_dim = width
        self.classifier = nn.Linear(width, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


class LeNet(nn.Module):
    """LeNet-5 (ReLU, max pooling); padding keeps 8×8 inputs valid."""

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int]):
        super().__init__()
        side = min(image_size)
        self.body = nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=2 if side < 32 else 0),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=2 if side < 16 else 0),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        with torch.no_grad():
            d = self.body(torch.zeros(1, channels, *image_size)).shape[1]
        self.fc = nn.Sequential(nn.Linear(d, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())
        self.feature_dim = 84
        self.classifier = nn.Linear(84, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.n1 = make_norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = make_norm(norm, cout)
        self.short = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), make_norm(norm, cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.n1(self.conv1(x)))
        return torch.relu(self.n2(self.conv2(out)) + self.short(x))


class ResNet18(nn.Module):
    """ResNet-18 for small images: 3×3 stem, no max pooling, global average pooling."""

    def __init__(
        self, channels: int, num_classes: int, image_size: tuple[int, int], norm: str = "instance"
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(channels, 64, 3, 1, 1, bias=False), make_norm(norm, 64), nn.ReLU()
        )
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [_BasicBlock(cin, cout, stride, norm), _BasicBlock(cout, cout, 1, norm)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = 512
        self.classifier = nn.Linear(512, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        return self.blocks(self.stem(x)).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


MODELS = ("convnet", "mlp", "lenet", "resnet18")


def check_model_options(name: str, kwargs: dict) -> None:
    """Refuse, with one line, a model name or keyword option that :func:`build_model` would
    fail on (an unknown key, a ConvNet geometry or norm no one knows), before any data is read:
    a run config's ``eval.model-kwargs.geometry`` is checked when the settings load."""
    classes = {"convnet": ConvNet, "mlp": MLP, "lenet": LeNet, "resnet18": ResNet18}
    if name not in classes:
        raise UnknownNameError(f"unknown model '{name}'; choose one of {', '.join(MODELS)}")
    params = inspect.signature(classes[name]).parameters
    known = [k for k in params if k not in ("channels", "num_classes", "image_size")]
    for key in kwargs:
        if key not in known:
            options = ", ".join(known) or "none"
            raise ConfigError(f"model '{name}' has no option '{key}' (its options: {options})")
    if kwargs.get("geometry") is not None and kwargs["geometry"] not in GEOMETRIES:
        raise ConfigError(
            f"unknown ConvNet geometry '{kwargs['geometry']}'; choose one of {', '.join(GEOMETRIES)}"
        )
    if "norm" in kwargs and kwargs["norm"] not in NORMS:
        raise ConfigError(f"unknown norm '{kwargs['norm']}'; choose one of {', '.join(NORMS)}")


def build_model(name: str, info: DatasetInfo, **kwargs) -> nn.Module:
    """A fresh model for ``info``'s image shape and classes. ``kwargs`` go to the class
    (e.g. ``width``, ``depth``, ``norm``, ``geometry`` for the ConvNet)."""
    size = (info.height, info.width)
    if name == "convnet":
        return ConvNet(info.channels, info.num_classes, size, **kwargs)
    if name == "mlp":
        return MLP(info.channels, info.num_classes, size, **kwargs)
    if name == "lenet":
        return LeNet(info.channels, info.num_classes, size, **kwargs)
    if name == "resnet18":
        return ResNet18(info.channels, info.num_classes, size, **kwargs)
    raise UnknownNameError(f"unknown model '{name}'; choose one of {', '.join(MODELS)}")
