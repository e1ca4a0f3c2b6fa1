"""The set format at its boundaries, and as properties: whatever the validator accepts round-trips
and satisfies every documented invariant; any mutation of a valid file is refused with one
SyntheticSetError (one line), never another exception, never a silent change."""

import json
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_synthetic import META  # the smallest valid provenance, shared with the unit tests

from fedistill.errors import SyntheticSetError
from fedistill.synthetic import MAX_HEADER_BYTES, SyntheticSet

IMAGES = torch.zeros(2, 1, 4, 4)


def _file(tensors: dict, meta: dict | None = META) -> bytes:
    from safetensors.torch import save

    return save(tensors, metadata={"fedistill": json.dumps(meta)} if meta is not None else None)


def _refused(blob: bytes, match: str | None = None) -> str:
    with pytest.raises(SyntheticSetError, match=match) as info:
        SyntheticSet.from_bytes(blob)
    message = str(info.value)
    assert message.strip() and "\n" not in message.strip(), message
    return message


# ------------------------------------------------------------------ boundaries, one by one


@pytest.mark.parametrize(
    ("labels", "meta", "match"),
    [
        (torch.tensor([0, 3]), META, "0..2"),  # label = K: one past the last class
        (torch.tensor([-1, 0]), META, "0..2"),
        (torch.tensor([[1.2, -0.2, 0.0], [0.0, 1.0, 0.0]]), META | {"label_kind": "soft"}, "≥ 0"),
        (torch.tensor([[0.5, 0.2, 0.0], [0.0, 1.0, 0.0]]), META | {"label_kind": "soft"}, "sum"),
        (torch.tensor([[float("inf"), 0, 0], [0, 1, 0]]), META | {"label_kind": "targets"}, "NaN"),
        (torch.tensor([0, 1]), META | {"std": [0.0]}, "positive"),
        (torch.tensor([0, 1]), META | {"std": [-0.4]}, "positive"),
        (torch.tensor([0, 1]), META | {"num_classes": 1}, "num_classes"),
        (torch.tensor([0, 1]), META | {"label_kind": "soft"}, "hard"),
    ],
)
def test_labels_and_metadata_at_their_boundaries_are_refused(labels, meta, match):
    _refused(_file({"images": IMAGES, "labels": labels}, meta), match)


def test_the_last_valid_label_and_a_proper_soft_row_are_accepted():
    assert len(SyntheticSet.from_bytes(_file({"images": IMAGES, "labels": torch.tensor([0, 2])})))
    soft = torch.tensor([[0.0, 0.0, 1.0], [0.25, 0.25, 0.5]])
    s = SyntheticSet.from_bytes(
        _file({"images": IMAGES, "labels": soft}, META | {"label_kind": "soft"})
    )
    assert torch.equal(s.labels, soft)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_images_are_refused(value):
    images = IMAGES.clone()
    images[1, 0, 2, 3] = value
    _refused(_file({"images": images, "labels": torch.tensor([0, 1])}), "NaN or infinite")


def test_trailing_bytes_and_an_oversized_header_are_refused():
    good = _file({"images": IMAGES, "labels": torch.tensor([0, 1])})
    _refused(good + b"\x00", "padded")
    huge = json.dumps({"__metadata__": {"pad": "x" * (MAX_HEADER_BYTES + 10)}}).encode()
    _refused(struct.pack("<Q", len(huge)) + huge, "not a safetensors file")


# ------------------------------------------------------------------ properties


@st.composite
def valid_sets(draw):
    """Random sets of every kind the format allows."""
    n = draw(st.integers(1, 6))
    c = draw(st.sampled_from([1, 3]))
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    k = draw(st.integers(2, 5))
    finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)
    images = np.array(draw(st.lists(finite, min_size=n * c * h * w, max_size=n * c * h * w)))
    kind = draw(st.sampled_from(["hard", "soft", "targets"]))
    if kind == "hard":
        labels = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
        labels = labels.astype(np.int64)
    else:
        raw = np.array(draw(st.lists(st.floats(0, 1), min_size=n * k, max_size=n * k)))
        labels = raw.reshape(n, k) + 1e-3
        if kind == "soft":  # probability rows
            labels = labels / labels.sum(1, keepdims=True)
        labels = labels.astype(np.float32)
    meta = META | {
        "num_classes": k,
        "mean": [0.5] * c,
        "std": [draw(st.floats(1e-3, 10))] * c,
        "label_kind": kind,
    }
    return SyntheticSet(
        torch.from_numpy(images.astype(np.float32).reshape(n, c, h, w)),
        torch.from_numpy(labels),
        meta,
    )


def _invariants(s: SyntheticSet) -> None:
    n, c, _h, _w = s.images.shape
    assert s.images.dtype == torch.float32 and torch.isfinite(s.images).all()
    assert len(s.meta["mean"]) == len(s.meta["std"]) == c and min(s.meta["std"]) > 0
    k = s.num_classes
    if s.labels.dtype == torch.int64:
        assert s.labels.shape == (n,) and int(s.labels.min()) >= 0 and int(s.labels.max()) < k
    else:
        assert s.labels.shape == (n, k) and torch.isfinite(s.labels).all()
        if s.meta["label_kind"] == "soft":
            assert (s.labels >= -1e-6).all() and (s.labels.sum(1) - 1).abs().max() <= 1e-3


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_sets())
def test_every_accepted_set_round_trips_bit_exactly_and_keeps_its_invariants(s):
    _invariants(s)
    back = SyntheticSet.from_bytes(s.to_bytes())
    assert back.images.numpy().tobytes() == s.images.numpy().tobytes()
    assert back.labels.numpy().tobytes() == s.labels.numpy().tobytes()
    assert back.meta == s.meta
    _invariants(back)
    arrays = s.to_arrays()
    assert SyntheticSet.from_arrays(arrays["x"], arrays["y"], dict(s.meta)).meta == s.meta


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_sets(), st.data())
def test_any_truncation_or_extension_of_a_valid_file_is_refused(s, data):
    blob = s.to_bytes()
    cut = data.draw(st.integers(0, len(blob) - 1))
    _refused(blob[:cut])
    _refused(blob + data.draw(st.binary(min_size=1, max_size=16)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_sets(), st.data())
def test_a_corrupted_byte_is_refused_or_yields_a_set_that_still_holds_every_invariant(s, data):
    """Flipping any byte (length field, JSON header, metadata, tensor data) either fails with
    one SyntheticSetError or — a flip inside the tensor data or a harmless header byte — gives a
    set that passes validation again; never another exception."""
    blob = bytearray(s.to_bytes())
    i = data.draw(st.integers(0, len(blob) - 1))
    blob[i] ^= data.draw(st.integers(1, 255))
    try:
        t = SyntheticSet.from_bytes(bytes(blob))
    except SyntheticSetError as exc:
        assert "\n" not in str(exc).strip()
        return
    _invariants(t)


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(["float64", "float16", "int32", "uint8"]),
    st.sampled_from(["images", "labels"]),
)
def test_wrong_dtypes_are_refused(dtype, which):
    tensors = {"images": IMAGES, "labels": torch.tensor([0, 1])}
    tensors[which] = tensors[which].to(getattr(torch, dtype))
    _refused(_file(tensors), "must be")
