"""Datasets as normalised tensors, with one constructor shape for all of them.

Every dataset is loaded the same way, ``load_dataset(name, root=..., train=..., download=...)``,
and comes back as :class:`LabeledImages`: float32 images N×C×H×W already normalised with the
dataset's per-channel mean/std, int64 labels, and a :class:`DatasetInfo`. Callers never branch on
the dataset.

``digits`` (scikit-learn's bundled 8×8 handwritten digits) is the embedded default and always
available offline. ``mnist``, ``fashion-mnist``, ``cifar10`` and ``svhn`` live under ``root`` in
torchvision's layout; nothing is downloaded unless asked. CIFAR-10 and SVHN are read through
torchvision's dataset classes, and so is an MNIST-like dataset whose files are absent (to
download them, or to say which are missing). MNIST-like files that are present are read here
(:func:`read_idx`: the idx format is a four-byte magic, the dimensions and the bytes) into the
same tensors torchvision's classes give (``tests/fedistill/test_data.py``): importing
``torchvision.datasets`` costs about 1.5 s, paid by every process that loads a dataset — each
Flower client actor and the server on its critical path.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fedistill.errors import DatasetCorruptError, DatasetNotFoundError, UnknownNameError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts of a dataset: shape, classes and the normalisation applied."""

    name: str
    num_classes: int
    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool = False  # horizontal flips are label-preserving (not for digits)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


@dataclass
class LabeledImages:
    """Normalised images (N×C×H×W float32) with int64 labels and their dataset's facts."""

    images: Tensor
    labels: Tensor
    info: DatasetInfo
    _by_class: list[Tensor] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.labels.ndim != 1 or len(self.images) != len(self.labels):
            raise ValueError(
                f"images must be N×C×H×W and labels N, got {tuple(self.images.shape)} "
                f"and {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    def subset(self, indices: Tensor | np.ndarray | list[int]) -> LabeledImages:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return LabeledImages(self.images[idx], self.labels[idx], self.info)

    def class_indices(self) -> list[Tensor]:
        """Indices of each class's examples, computed once."""
        if self._by_class is None:
            self._by_class = [
                torch.nonzero(self.labels == c, as_tuple=True)[0] for c in range(self.num_classes)
            ]
        return self._by_class

    def to(self, device: torch.device | str) -> LabeledImages:
        return LabeledImages(self.images.to(device), self.labels.to(device), self.info)


# --------------------------------------------------------------------------- normalisation

MNIST_INFO = DatasetInfo("mnist", 10, 1, 28, 28, (0.1307,), (0.3081,))
FASHION_INFO = DatasetInfo("fashion-mnist", 10, 1, 28, 28, (0.2860,), (0.3530,))
CIFAR10_INFO = DatasetInfo(
    "cifar10", 10, 3, 32, 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), flip=True
)
SVHN_INFO = DatasetInfo("svhn", 10, 3, 32, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))
# digits: pixel values 0..16 scaled to 0..1; statistics of the fixed training split below.
DIGITS_INFO = DatasetInfo("digits", 10, 1, 8, 8, (0.3056,), (0.3761,))
DIGITS_TEST_FRACTION = 0.3
DIGITS_SPLIT_SEED = 0


def normalise(images01: Tensor, info: DatasetInfo) -> Tensor:
    """Map images in [0, 1] to the dataset's normalised space."""
    mean = torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images01.float() - mean) / std


def denormalise(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """Inverse of :func:`normalise` (for display): back to [0, 1] scale (not clamped)."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return images * s + m


# --------------------------------------------------------------------------- torchvision-style classes


class Digits(torch.utils.data.Dataset):
    """scikit-learn's 1,797 handwritten 8×8 digits with torchvision's constructor.

    A fixed stratified split (30% test, seed 0) makes ``train=True/False`` reproducible.
    ``root`` and ``download`` are accepted for a uniform signature; the data ship with
    scikit-learn.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        train: bool = True,
        download: bool = False,
        transform: Callable | None = None,
    ) -> None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        bunch = load_digits()
        x = bunch.images.astype(np.float32) / 16.0
        y = bunch.target.astype(np.int64)
        idx_train, idx_test = train_test_split(
            np.arange(len(y)),
            test_size=DIGITS_TEST_FRACTION,
            stratify=y,
            random_state=DIGITS_SPLIT_SEED,
        )
        idx = np.sort(idx_train if train else idx_test)
        self.data = torch.from_numpy(x[idx])  # N×8×8 in [0, 1]
        self.targets = torch.from_numpy(y[idx])
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img = self.data[i].unsqueeze(0)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[i])


# --------------------------------------------------------------------------- loaders

_TORCHVISION_FILES = {
    "mnist": (
        "MNIST/raw/",
        "train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte",
    ),
    "fashion-mnist": (
        "FashionMNIST/raw/",
        "train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte",
    ),
    "cifar10": ("", "cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta)"),
    "svhn": ("", "train_32x32.mat, test_32x32.mat"),
}


def _missing(name: str, root: str | Path | None, download: bool, cause: Exception) -> Exception:
    sub, files = _TORCHVISION_FILES[name]
    where = Path(root).expanduser() / sub if root else Path("<--data-root>") / sub
    hint = "" if download else " (pass download=True / --download to fetch them when online)"
    return DatasetNotFoundError(
        f"dataset '{name}' not found: expected {files} under {where}{hint}; cause: {cause}"
    )


def _load_digits(root, train, download) -> LabeledImages:
    ds = Digits(root, train=train)
    return LabeledImages(normalise(ds.data.unsqueeze(1), DIGITS_INFO), ds.targets, DIGITS_INFO)


def read_idx(path: Path, ndim: int) -> Tensor:
    """The uint8 array of an idx file (the MNIST format: two zero bytes, the type code 0x08 for
    unsigned bytes, the number of dimensions, each dimension as a big-endian int32, then the
    values in C order), as torchvision's MNIST reads it.

    Raises:
        DatasetCorruptError: not an idx file of unsigned bytes with ``ndim`` dimensions, or its
            data is not as long as its header says.
    """
    raw = path.read_bytes()
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:4] != bytes((0, 0, 0x08, ndim)):
        raise DatasetCorruptError(
            f"{path}: not an idx file of unsigned bytes with {ndim} dimension(s)"
        )
    shape = struct.unpack(f">{ndim}i", raw[4:header])
    count = math.prod(shape)
    if min(shape) < 0 or len(raw) - header != count:
        raise DatasetCorruptError(
            f"{path}: {len(raw) - header} data bytes, but the header says "
            f"{' × '.join(map(str, shape))} = {count}"
        )
    values = np.frombuffer(raw, dtype=np.uint8, count=count, offset=header)
    return torch.from_numpy(values.reshape(shape).copy())


def _idx_files(raw_dir: Path, train: bool) -> tuple[Path, Path]:
    """The images and labels idx files of an MNIST-like split, in torchvision's layout."""
    prefix = "train" if train else "t10k"
    return raw_dir / f"{prefix}-images-idx3-ubyte", raw_dir / f"{prefix}-labels-idx1-ubyte"


def _read_mnist_like(files: tuple[Path, Path], info: DatasetInfo) -> tuple[Tensor, Tensor]:
    """Images (N×H×W uint8) and labels (int64) of an MNIST-like split from its idx files."""
    images = read_idx(files[0], 3)
    labels = read_idx(files[1], 1).long()
    where = f"{files[0]}, {files[1].name}"
    if tuple(images.shape[1:]) != info.shape[1:]:
        raise DatasetCorruptError(
            f"{where}: images are {tuple(images.shape[1:])}, not {info.shape[1:]}"
        )
    if len(images) != len(labels):
        raise DatasetCorruptError(f"{where}: {len(images)} images but {len(labels)} labels")
    if len(labels) and int(labels.max()) >= info.num_classes:
        raise DatasetCorruptError(
            f"{where}: label {int(labels.max())} is not a class of {info.num_classes}"
        )
    return images, labels


def _load_mnist_like(cls_name: str, info: DatasetInfo):
    def load(root, train, download) -> LabeledImages:
        if root is None:
            raise _missing(info.name, root, download, ValueError("no --data-root given"))
        files = _idx_files(Path(root).expanduser() / cls_name / "raw", train)
        if all(f.is_file() for f in files):
            data, targets = _read_mnist_like(files, info)
        else:  # torchvision downloads them, or says what is missing
            import torchvision.datasets as tvd

            try:
                ds = getattr(tvd, cls_name)(str(root), train=train, download=download)
            except Exception as exc:  # torchvision raises RuntimeError / URLError / OSError
                raise _missing(info.name, root, download, exc) from None
            data, targets = ds.data, ds.targets.long().clone()
        images = data.unsqueeze(1).float() / 255.0
        return LabeledImages(normalise(images, info), targets, info)

    return load


def _load_cifar10(root, train, download) -> LabeledImages:
    import torchvision.datasets as tvd

    if root is None:
        raise _missing("cifar10", root, download, ValueError("no --data-root given"))
    try:
        ds = tvd.CIFAR10(str(root), train=train, download=download)
    except Exception as exc:
        raise _missing("cifar10", root, download, exc) from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float() / 255.0
    return LabeledImages(normalise(images, CIFAR10_INFO), torch.tensor(ds.targets), CIFAR10_INFO)


def _load_svhn(root, train, download) -> LabeledImages:
    import torchvision.datasets as tvd

    if root is None:
        raise _missing("svhn", root, download, ValueError("no --data-root given"))
    try:
        ds = tvd.SVHN(str(root), split="train" if train else "test", download=download)
    except Exception as exc:
        raise _missing("svhn", root, download, exc) from None
    images = torch.from_numpy(ds.data).float() / 255.0
    return LabeledImages(
        normalise(images, SVHN_INFO), torch.from_numpy(ds.labels).long(), SVHN_INFO
    )


DATASETS: dict[str, Callable[[str | Path | None, bool, bool], LabeledImages]] = {
    "digits": _load_digits,
    "mnist": _load_mnist_like("MNIST", MNIST_INFO),
    "fashion-mnist": _load_mnist_like("FashionMNIST", FASHION_INFO),
    "cifar10": _load_cifar10,
    "svhn": _load_svhn,
}
INFOS = {i.name: i for i in (DIGITS_INFO, MNIST_INFO, FASHION_INFO, CIFAR10_INFO, SVHN_INFO)}


def dataset_info(name: str) -> DatasetInfo:
    if name not in INFOS:
        raise UnknownNameError(f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}")
    return INFOS[name]


def load_dataset(
    name: str,
    root: str | Path | None = None,
    train: bool = True,
    download: bool = False,
) -> LabeledImages:
    """Load a dataset split as normalised tensors.

    Raises:
        UnknownNameError: the name is not one of :data:`DATASETS`.
        DatasetNotFoundError: the files are absent (the message names them and where).
    """
    if name not in DATASETS:
        raise UnknownNameError(f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}")
    data = DATASETS[name](root, train, download)
    log.info(
        "loaded %s/%s: %d images %s",
        name,
        "train" if train else "test",
        len(data),
        tuple(data.images.shape[1:]),
    )
    return data
