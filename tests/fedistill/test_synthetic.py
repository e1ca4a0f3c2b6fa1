import json
import pickle
import struct

import numpy as np
import pytest
import torch

from fedistill.errors import SyntheticSetError
from fedistill.synthetic import SyntheticSet

META = {
    "dataset": "digits",
    "mean": [0.3],
    "std": [0.4],
    "method": "random",
    "ipc": 2,
    "seed": 0,
    "iterations": 0,
    "num_classes": 3,
}


def make(**kw):
    torch.manual_seed(0)
    images = kw.pop("images", torch.randn(6, 1, 8, 8))
    labels = kw.pop("labels", torch.tensor([0, 0, 1, 1, 2, 2]))
    return SyntheticSet(images, labels, META | kw)


def test_round_trip_is_bit_exact(tmp_path):
    s = make(hyperparameters={"lr": 0.1}, privacy={"epsilon": 1.5})
    s.images[0, 0, 0, 0] = 1e-38  # subnormal-adjacent values survive too
    p = s.save(tmp_path / "set.safetensors")
    t = SyntheticSet.load(p)
    assert t.images.numpy().tobytes() == s.images.numpy().tobytes()
    assert torch.equal(t.labels, s.labels) and t.meta == s.meta
    assert SyntheticSet.from_bytes(s.to_bytes()).meta == s.meta


def test_soft_labels_round_trip(tmp_path):
    soft = torch.softmax(torch.randn(6, 3), 1)
    s = make(labels=soft)
    assert s.meta["label_kind"] == "soft"
    t = SyntheticSet.load(s.save(tmp_path / "soft.safetensors"))
    assert torch.equal(t.labels, soft) and torch.equal(t.hard_labels(), soft.argmax(1))


def test_pickle_file_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "executed"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(SyntheticSetError, match="pickle"):
        SyntheticSet.load(path)
    assert not marker.exists()


def test_torch_save_zip_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    torch.save({"images": torch.zeros(1)}, path)
    with pytest.raises(SyntheticSetError):
        SyntheticSet.load(path)


@pytest.mark.parametrize("cut", [3, 20, -10])
def test_truncated_file_is_refused(tmp_path, cut):
    blob = make().to_bytes()
    path = tmp_path / "t.safetensors"
    path.write_bytes(blob[:cut])
    with pytest.raises(SyntheticSetError):
        SyntheticSet.load(path)


def test_garbage_and_missing_file(tmp_path):
    path = tmp_path / "g.safetensors"
    path.write_bytes(struct.pack("<Q", 10) + b"not json!!")
    with pytest.raises(SyntheticSetError, match="not a safetensors file"):
        SyntheticSet.load(path)
    path.write_bytes(struct.pack("<Q", 10) + b"{not json}")
    with pytest.raises(SyntheticSetError, match="JSON"):
        SyntheticSet.load(path)
    with pytest.raises(SyntheticSetError, match="not found"):
        SyntheticSet.load(tmp_path / "absent.safetensors")


def _rewrite(tensors, meta):
    from safetensors.torch import save

    return save(tensors, metadata={"fedistill": json.dumps(meta)} if meta is not None else None)


@pytest.mark.parametrize(
    ("tensors", "meta", "message"),
    [
        (
            {"images": torch.full((2, 1, 8, 8), float("nan")), "labels": torch.tensor([0, 1])},
            META,
            "NaN",
        ),
        ({"images": torch.zeros(2, 8, 8), "labels": torch.tensor([0, 1])}, META, "N×C×H×W"),
        ({"images": torch.zeros(2, 1, 8, 8), "labels": torch.tensor([0, 7])}, META, "0..2"),
        ({"images": torch.zeros(2, 1, 8, 8), "labels": torch.tensor([0, 1, 2])}, META, "shape"),
        (
            {
                "images": torch.zeros(2, 1, 8, 8, dtype=torch.float64),
                "labels": torch.tensor([0, 1]),
            },
            META,
            "float32",
        ),
        (
            {
                "images": torch.zeros(2, 1, 8, 8),
                "labels": torch.tensor([0, 1]),
                "extra": torch.zeros(1),
            },
            META,
            "expected tensors",
        ),
        ({"images": torch.zeros(2, 1, 8, 8), "labels": torch.tensor([0, 1])}, None, "metadata"),
        (
            {"images": torch.zeros(2, 1, 8, 8), "labels": torch.tensor([0, 1])},
            {k: v for k, v in META.items() if k != "std"},
            "lacks std",
        ),
        (
            {"images": torch.zeros(2, 1, 8, 8), "labels": torch.tensor([0, 1])},
            META | {"mean": [0.1, 0.2, 0.3]},
            "mean",
        ),
        (
            {"images": torch.zeros(2, 1, 8, 8), "labels": torch.ones(2, 3)},
            META | {"label_kind": "soft"},
            "probability",
        ),
    ],
)
def test_malformed_sets_are_refused(tmp_path, tensors, meta, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(_rewrite(tensors, meta))
    with pytest.raises(SyntheticSetError, match=message):
        SyntheticSet.load(path)


def test_from_arrays_validates_untrusted_payloads():
    good = make().to_arrays()
    assert len(SyntheticSet.from_arrays(good["x"], good["y"], META)) == 6
    with pytest.raises(SyntheticSetError, match="float32"):
        SyntheticSet.from_arrays(good["x"].astype(np.float64), good["y"], META)
    with pytest.raises(SyntheticSetError):
        SyntheticSet.from_arrays(good["x"], good["y"].astype(np.int32), META)


def test_concat_pools_hard_and_soft():
    a = make()
    b = make(labels=torch.softmax(torch.randn(6, 3), 1))
    pooled = SyntheticSet.concat([a, b])
    assert len(pooled) == 12 and pooled.labels.shape == (12, 3)
    assert torch.equal(pooled.labels[:6].argmax(1), a.labels)


def test_concat_refuses_sets_of_different_class_counts():
    """A set of 3 classes pooled with one of 4 would keep the first's class count silently (a
    mutant-testing find): it is refused."""
    a = make()
    b = SyntheticSet(torch.zeros(2, 1, 4, 4), torch.tensor([0, 3]), META | {"num_classes": 4})
    with pytest.raises(SyntheticSetError, match=r"different class counts \[3, 4\]"):
        SyntheticSet.concat([a, b])
