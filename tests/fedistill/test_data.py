import numpy as np
import pytest
import torch

from fedistill.data import (
    DIGITS_INFO,
    MNIST_INFO,
    Digits,
    dataset_info,
    denormalise,
    load_dataset,
    normalise,
)
from fedistill.errors import DatasetCorruptError, DatasetNotFoundError, UnknownNameError


def test_digits_split_is_fixed_stratified_and_disjoint(digits_train, digits_test):
    assert len(digits_train) == 1257 and len(digits_test) == 540
    assert digits_train.images.shape[1:] == (1, 8, 8)
    # stratified: every class is in both splits in about the same proportion
    tr = np.bincount(digits_train.labels.numpy(), minlength=10) / len(digits_train)
    te = np.bincount(digits_test.labels.numpy(), minlength=10) / len(digits_test)
    assert np.abs(tr - te).max() < 0.01
    # disjoint and covering: the two splits together are the 1,797 raw images, each once
    # (compared as multisets of rows; digits has a few duplicate images, which must be split
    # as often as they occur)
    from sklearn.datasets import load_digits

    a, b = Digits(train=True), Digits(train=False)
    raw = load_digits().images.reshape(-1, 64).astype(np.float32) / 16.0
    both = torch.cat([a.data, b.data]).reshape(-1, 64).numpy()
    assert len(a) + len(b) == len(raw) == 1797

    def rows(m):
        return sorted(map(bytes, m.view(np.uint32)))

    assert rows(both) == rows(raw)
    assert torch.equal(load_dataset("digits").images, digits_train.images)  # deterministic


def test_digits_normalisation_matches_recorded_stats(digits_train):
    x = digits_train.images
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1) < 0.01
    back = denormalise(x, DIGITS_INFO.mean, DIGITS_INFO.std)
    assert float(back.min()) >= -1e-5 and float(back.max()) <= 1 + 1e-5


def test_class_indices_partition_the_set(digits_train):
    idx = torch.cat(digits_train.class_indices())
    assert sorted(idx.tolist()) == list(range(len(digits_train)))


def test_unknown_dataset_is_refused():
    with pytest.raises(UnknownNameError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(UnknownNameError):
        dataset_info("nope")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "svhn"])
def test_missing_torchvision_data_names_expected_files(tmp_path, name):
    with pytest.raises(DatasetNotFoundError, match=f"dataset '{name}' not found: expected"):
        load_dataset(name, tmp_path, train=True, download=False)


def test_mnist_subset_loads_in_torchvision_layout(mnist_root):
    train = load_dataset("mnist", mnist_root, train=True)
    test = load_dataset("mnist", mnist_root, train=False)
    assert len(train) == 8006 and len(test) == 997
    assert train.images.shape[1:] == (1, 28, 28) and set(train.labels.tolist()) == set(range(10))
    assert abs(float(train.images.mean())) < 0.05


def _write_idx(path, array: np.ndarray) -> None:
    """An idx file as MNIST's are written: magic (0, 0, 0x08, ndim), big-endian dims, bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes((0, 0, 0x08, array.ndim)) + np.asarray(array.shape, ">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist(root, n_train=30, n_test=12, seed=0):
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    return raw


@pytest.mark.parametrize("train", [True, False])
def test_mnist_idx_files_load_as_torchvision_reads_them(tmp_path, train):
    import torchvision.datasets as tvd

    _write_mnist(tmp_path)
    ours = load_dataset("mnist", tmp_path, train=train)
    ref = tvd.MNIST(str(tmp_path), train=train)
    assert torch.equal(ours.images, normalise(ref.data.unsqueeze(1).float() / 255.0, MNIST_INFO))
    assert torch.equal(ours.labels, ref.targets) and ours.labels.dtype == torch.int64
    assert len(ours) == (30 if train else 12)


def _truncate(raw):
    f = raw / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-5])


def _bad_magic(raw):
    f = raw / "train-labels-idx1-ubyte"
    f.write_bytes(b"\x00\x00\x0d\x01" + f.read_bytes()[4:])  # float data, not bytes


def _label_out_of_range(raw):
    _write_idx(raw / "train-labels-idx1-ubyte", np.full(30, 12))


def _count_mismatch(raw):
    _write_idx(raw / "train-labels-idx1-ubyte", np.zeros(29))


def _wrong_size(raw):
    _write_idx(raw / "train-images-idx3-ubyte", np.zeros((30, 32, 32)))


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (_truncate, "data bytes, but the header says 30 × 28 × 28"),
        (_bad_magic, "not an idx file of unsigned bytes with 1 dimension"),
        (_label_out_of_range, "label 12 is not a class of 10"),
        (_count_mismatch, "30 images but 29 labels"),
        (_wrong_size, r"images are \(32, 32\), not \(28, 28\)"),
    ],
)
def test_corrupt_mnist_files_are_refused_with_a_reason(tmp_path, corrupt, message):
    corrupt(_write_mnist(tmp_path))
    with pytest.raises(DatasetCorruptError, match=message):
        load_dataset("mnist", tmp_path, train=True)


def test_mnist_subset_reads_as_torchvision_reads_it(mnist_root):
    import torchvision.datasets as tvd

    for train in (True, False):
        ref = tvd.MNIST(str(mnist_root), train=train)
        ours = load_dataset("mnist", mnist_root, train=train)
        assert torch.equal(ours.labels, ref.targets)
        assert torch.equal(ours.images, normalise(ref.data.unsqueeze(1) / 255.0, MNIST_INFO))
