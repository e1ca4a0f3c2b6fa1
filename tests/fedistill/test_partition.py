import numpy as np
import pytest

from fedistill.errors import ConfigError, UnknownNameError
from fedistill.partition import partition

Y = np.repeat(np.arange(10), 100)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_every_index_in_exactly_one_client(scheme):
    parts = partition(Y, 7, scheme, alpha=0.5, seed=3)
    allidx = np.concatenate(parts)
    assert len(allidx) == len(Y) and len(np.unique(allidx)) == len(Y)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_same_seed_same_split_other_seed_other_split(scheme):
    a = partition(Y, 5, scheme, seed=1)
    b = partition(Y, 5, scheme, seed=1)
    c = partition(Y, 5, scheme, seed=2)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c))


def _label_skew(parts):
    """Mean total-variation distance between a client's label mix and the global one."""
    glob = np.bincount(Y, minlength=10) / len(Y)
    return np.mean(
        [0.5 * np.abs(np.bincount(Y[p], minlength=10) / len(p) - glob).sum() for p in parts]
    )


def test_dirichlet_alpha_controls_label_skew():
    skew_small = _label_skew(partition(Y, 10, "dirichlet", alpha=0.1, seed=0))
    skew_large = _label_skew(partition(Y, 10, "dirichlet", alpha=100.0, seed=0))
    assert skew_small > 0.5 > 0.15 > skew_large


def test_dirichlet_respects_min_partition_size():
    parts = partition(Y, 10, "dirichlet", alpha=0.1, min_partition_size=20, seed=0)
    assert min(len(p) for p in parts) >= 20


def test_shards_give_few_classes_per_client():
    parts = partition(Y, 10, "shards", shards_per_partition=2, seed=0)
    assert max(len(np.unique(Y[p])) for p in parts) <= 2
    assert [len(p) for p in parts] == [100] * 10


def test_bad_arguments_are_refused():
    with pytest.raises(UnknownNameError):
        partition(Y, 3, "pathological")
    with pytest.raises(ConfigError):
        partition(Y, 3, "dirichlet", alpha=0.0)
    with pytest.raises(ConfigError):
        partition(Y[:5], 10, "iid")
