import numpy as np
import pytest
import torch

from fedistill.data import DIGITS_INFO, Digits, dataset_info, denormalise, load_dataset
from fedistill.errors import DatasetNotFoundError, UnknownNameError


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
