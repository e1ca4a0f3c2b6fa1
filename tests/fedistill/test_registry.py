import pytest
import torch

from fedistill.distill import distill, get_method, methods
from fedistill.errors import ConfigError, UnknownNameError


def test_registry_lists_random_and_refuses_unknown():
    assert "random" in methods()
    with pytest.raises(UnknownNameError, match="unknown method 'nope'"):
        get_method("nope")


def test_unknown_option_for_a_method_is_refused():
    with pytest.raises(ConfigError, match="takes no option rho"):
        get_method("random").make_config(rho=0.5)


@pytest.mark.parametrize("ipc", [0, -3])
def test_ipc_must_be_positive(digits_train, ipc):
    with pytest.raises(ConfigError, match="ipc"):
        distill("random", digits_train, ipc)


def test_random_is_stratified_real_and_seeded(digits_train):
    a = distill("random", digits_train, 5, seed=1)
    b = distill("random", digits_train, 5, seed=1)
    c = distill("random", digits_train, 5, seed=2)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert torch.bincount(a.labels).tolist() == [5] * 10
    # every image is a real training image of its label
    idx = torch.tensor(a.meta["source_indices"])
    assert torch.equal(digits_train.images[idx], a.images)
    assert torch.equal(digits_train.labels[idx], a.labels)


def test_client_missing_classes_distills_only_present_ones(digits_train):
    part = digits_train.subset(torch.nonzero(digits_train.labels < 3, as_tuple=True)[0])
    s = distill("random", part, 4)
    assert sorted(set(s.labels.tolist())) == [0, 1, 2] and len(s) == 12
    assert s.num_classes == 10


def test_model_keyword_refused_by_methods_without_it(digits_train):
    from fedistill.models import build_model

    with pytest.raises(ConfigError, match="cannot distill against a given model"):
        distill("random", digits_train, 1, model=build_model("convnet", digits_train.info))
