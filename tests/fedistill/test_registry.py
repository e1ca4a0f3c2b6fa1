import json

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
    record: dict = {}
    d = distill("random", digits_train, 5, seed=1, record=record)
    idx = torch.as_tensor(record["exposed"])
    assert len(idx) == 50 and len(set(idx.tolist())) == 50
    order = torch.argsort(d.labels, stable=True)  # exposed are sorted indices, not set order
    match = (d.images.flatten(1)[:, None] == digits_train.images[idx].flatten(1)[None]).all(2)
    assert match.any(1).all() and match.any(0).all()  # exactly the set's images, no others
    assert torch.equal(torch.sort(digits_train.labels[idx]).values, d.labels[order])


def test_exposed_indices_never_travel_with_the_set(digits_train, tmp_path):
    """The record is the attack harness's: not in meta, not in the file, not in the arrays."""
    from fedistill.synthetic import SyntheticSet

    record: dict = {}
    s = distill("random", digits_train, 3, seed=0, record=record)
    assert "exposed" not in s.meta and "source_indices" not in s.meta
    text = json.dumps(SyntheticSet.load(s.save(tmp_path / "s.safetensors")).meta)
    assert "exposed" not in text and "indices" not in text
    assert set(s.to_arrays()) == {"x", "y"}
    assert distill("random", digits_train, 3, seed=0).meta == s.meta  # record changes nothing


def test_dm_real_init_records_its_initial_images_and_noise_init_none(digits_train):
    for init, n in (("real", 20), ("noise", 0)):
        record: dict = {}
        start = distill(
            "dm", digits_train, 2, seed=0, iterations=0, init=init, batch_real=8, record=record
        )
        exposed = torch.as_tensor(record["exposed"], dtype=torch.int64)
        assert len(exposed) == n
        if n:
            x, r = start.images.flatten(1), digits_train.images[exposed].flatten(1)
            match = (x[:, None] == r[None]).all(2)
            assert match.any(1).all() and match.any(0).all()
            assert torch.equal(
                torch.sort(digits_train.labels[exposed]).values, torch.sort(start.labels).values
            )
    # the record does not perturb the run: same set with and without it
    a = distill("dm", digits_train, 1, seed=0, iterations=2, batch_real=8)
    b = distill("dm", digits_train, 1, seed=0, iterations=2, batch_real=8, record={})
    assert torch.equal(a.images, b.images)


@pytest.mark.parametrize(
    "method, options",
    [("dc", {"iterations": 1, "batch_real": 8}), ("kip", {"iterations": 1, "batch_target": 50})],
)
def test_other_real_init_methods_record_their_initial_images(digits_train, method, options):
    """After one step every image's nearest training image is still the one it started from."""
    record: dict = {}
    s = distill(method, digits_train, 1, seed=0, record=record, **options)
    exposed = torch.as_tensor(record["exposed"], dtype=torch.int64)
    assert len(exposed) == 10
    nearest = torch.cdist(s.images.flatten(1), digits_train.images.flatten(1)).argmin(1)
    assert sorted(nearest.tolist()) == exposed.tolist()


def test_client_missing_classes_distills_only_present_ones(digits_train):
    part = digits_train.subset(torch.nonzero(digits_train.labels < 3, as_tuple=True)[0])
    s = distill("random", part, 4)
    assert sorted(set(s.labels.tolist())) == [0, 1, 2] and len(s) == 12
    assert s.num_classes == 10


def test_model_keyword_refused_by_methods_without_it(digits_train):
    from fedistill.models import build_model

    with pytest.raises(ConfigError, match="cannot distill against a given model"):
        distill("random", digits_train, 1, model=build_model("convnet", digits_train.info))
