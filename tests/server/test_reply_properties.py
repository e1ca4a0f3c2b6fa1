"""Reply validation as properties: any reply the server accepts decodes to exactly the arrays the
client sent and satisfies every documented invariant; any mutation of a valid reply (dtype,
shape, NaN/inf, absurd values, labels out of range, missing or extra arrays, oversize, truncated
or corrupted bytes, impossible client-reported figures) is refused with one ReplyError carrying
one line, never another exception.

Replies are built the way the ClientApp builds them (``set_to_record``, ``set_metrics`` and its
MetricRecord, the provenance as JSON). Hypothesis runs derandomized with a small example count:
the fast loop must stay fast and CI deterministic.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clients.client_app import _metric_record
from clients.task import set_to_record
from fedistill.federated import client_distill, plausible_range, set_metrics
from fedistill.synthetic import SyntheticSet
from server.validate import MAX_COUNT, MAX_SECONDS, ReplyError, validate_synthetic_reply

IPC = 2
CAP = 1 << 20
PROPERTY = settings(
    max_examples=30,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def honest(digits_train) -> SyntheticSet:
    return client_distill(digits_train, "random", IPC, seed=0)


@pytest.fixture(scope="module")
def info(digits_train):
    return digits_train.info


def client_reply(syn: SyntheticSet, metrics: dict | None = None, pid: int = 1) -> RecordDict:
    """What the ClientApp sends for ``syn`` (its ``_feddm_step``, without the distillation)."""
    if metrics is None:
        metrics = set_metrics(syn, 120, 2.5)
    return RecordDict(
        {
            "synthetic": set_to_record(syn),
            "metrics": _metric_record(metrics, pid),
            "provenance": ConfigRecord({"json": json.dumps(syn.meta, sort_keys=True)}),
        }
    )


def with_arrays(content: RecordDict, **arrays) -> RecordDict:
    record = content["synthetic"]
    new = {k: record[k] for k in record}
    for key, value in arrays.items():
        if value is None:
            new.pop(key, None)
        else:
            new[key] = value if isinstance(value, Array) else Array(value)
    content["synthetic"] = ArrayRecord(new)
    return content


def check(content: RecordDict, info, max_ipc: int = IPC, max_bytes: int = CAP):
    return validate_synthetic_reply(content, info, max_ipc=max_ipc, max_bytes=max_bytes)


def refused(content: RecordDict, info, match: str | None = None, **kw) -> str:
    """The one-line reason the reply is refused; any other exception fails the test."""
    with pytest.raises(ReplyError, match=match) as caught:
        check(content, info, **kw)
    message = str(caught.value)
    assert message.strip() and "\n" not in message.strip(), message
    return message


# ------------------------------------------------------------------ what is accepted


@st.composite
def valid_sets(draw, honest: SyntheticSet):
    """A set an honest client could send: some of the honest images per class (at most IPC),
    rescaled within the plausible range, with hard or soft labels."""
    labels = honest.labels.numpy()
    keep = []
    for c in range(honest.num_classes):
        idx = np.flatnonzero(labels == c).tolist()
        keep += draw(st.lists(st.sampled_from(idx), max_size=IPC, unique=True)) if idx else []
    if not keep:
        keep = [0]
    x = honest.images.numpy()[keep] * np.float32(draw(st.floats(0.25, 2.0)))
    y = labels[keep]
    if draw(st.booleans()):
        k = honest.num_classes
        smooth = draw(st.floats(0.0, 0.5))
        y = (np.eye(k, dtype=np.float32)[y] * (1 - smooth) + smooth / k).astype(np.float32)
    return x.astype(np.float32), y


@st.composite
def valid_metrics(draw):
    m = {
        "num_examples": draw(st.integers(0, MAX_COUNT)),
        "num_synthetic": draw(st.integers(0, MAX_COUNT)),
        "seconds": draw(st.floats(0.0, MAX_SECONDS)),
        "bytes": draw(st.integers(0, MAX_COUNT)),
    }
    if draw(st.booleans()):
        m["epsilon"] = draw(st.floats(0.0, 1e6))
        m["delta"] = draw(st.floats(0.0, 1.0, exclude_max=True))
        m["noise_secure"] = draw(st.sampled_from([0, 1]))
        m["private_steps"] = draw(st.integers(0, MAX_COUNT))
    if draw(st.booleans()):
        m["rho"] = draw(st.floats(0.0, 1e6))
    return m


@PROPERTY
@given(data=st.data())
def test_every_accepted_reply_round_trips_and_keeps_its_invariants(data, honest, info):
    x, y = data.draw(valid_sets(honest))
    metrics = data.draw(valid_metrics())
    pid = data.draw(st.integers(0, 1000))
    content = with_arrays(client_reply(honest, metrics, pid), x=x, y=y)
    valid = check(content, info)
    syn = valid.syn
    # exactly the arrays sent, bit for bit
    assert np.array_equal(syn.images.numpy(), x) and syn.images.dtype == torch.float32
    assert np.array_equal(syn.labels.numpy(), y) and syn.labels.numpy().dtype == y.dtype
    # every invariant the server relies on
    n, k = len(x), info.num_classes
    assert tuple(syn.images.shape) == (n, *info.shape) and 1 <= n <= IPC * k
    assert torch.isfinite(syn.images).all()
    lo, hi = plausible_range(info)
    assert lo <= float(syn.images.min()) and float(syn.images.max()) <= hi
    hard = syn.hard_labels()
    assert int(hard.min()) >= 0 and int(hard.max()) < k
    assert int(torch.bincount(hard, minlength=k).max()) <= IPC
    if y.dtype == np.float32:
        assert syn.meta["label_kind"] == "soft" and (syn.labels >= 0).all()
        assert torch.allclose(syn.labels.sum(1), torch.ones(n), atol=1e-4)
    else:
        assert syn.meta["label_kind"] == "hard"
    # the server's facts, not the client's
    assert syn.meta["dataset"] == info.name and syn.meta["num_classes"] == k
    assert syn.meta["mean"] == list(info.mean) and syn.meta["std"] == list(info.std)
    # the metrics: what was sent (checked, not verified), the count the server's own
    sent = dict(metrics)
    sent["partition_id"] = pid
    sent["num_synthetic"] = n
    assert valid.metrics == sent
    assert valid.client_reported == sorted(set(sent) - {"partition_id", "num_synthetic"})
    assert x.nbytes + y.nbytes <= valid.payload_bytes <= x.nbytes + y.nbytes + 2 * 256  # + headers


@PROPERTY
@given(junk=st.one_of(st.text(max_size=50), st.binary(max_size=50).map(repr)))
def test_any_provenance_is_overridden_by_the_servers_facts(junk, honest, info):
    for raw in (junk, json.dumps({"dataset": junk, "mean": [junk], "num_classes": junk})):
        content = client_reply(honest)
        content["provenance"] = ConfigRecord({"json": raw})
        meta = check(content, info).syn.meta
        assert meta["dataset"] == info.name and meta["num_classes"] == info.num_classes
        assert meta["mean"] == list(info.mean) and meta["std"] == list(info.std)


# ------------------------------------------------------------------ what is refused


BAD_X_DTYPES = ["float64", "float16", "int64", "int32", "uint8", "bool"]
BAD_Y_DTYPES = ["int32", "int16", "uint8", "float64", "float16", "bool"]


@PROPERTY
@given(dtype=st.sampled_from(BAD_X_DTYPES), which=st.sampled_from(["x", "y"]))
def test_a_wrong_dtype_is_refused(dtype, which, honest, info):
    if which == "y":
        dtype = BAD_Y_DTYPES[BAD_X_DTYPES.index(dtype)]
    arrays = honest.to_arrays()
    content = with_arrays(client_reply(honest), **{which: arrays[which].astype(dtype)})
    want = "images must be float32" if which == "x" else "labels must be int64 or float32"
    refused(content, info, want)


@PROPERTY
@given(
    axis=st.integers(0, 3),
    delta=st.sampled_from([-1, 1, 3]),
    drop=st.booleans(),
)
def test_a_wrong_image_shape_is_refused(axis, delta, drop, honest, info):
    x = honest.images.numpy()
    if drop:  # a dimension fewer, or one more
        bad = x[:, 0] if axis < 2 else x[..., None]
    else:
        shape = list(x.shape)
        shape[axis] += delta if shape[axis] + delta >= 1 else 2
        bad = np.resize(x, shape).astype(np.float32)
    content = with_arrays(client_reply(honest), x=np.ascontiguousarray(bad))
    if not drop and axis == 0:  # a different N: the labels no longer match, or too many
        refused(content, info, "labels have shape|images; between")
    else:
        refused(content, info, "images have shape")


@PROPERTY
@given(n=st.integers(-3, 3).filter(bool), soft=st.booleans())
def test_labels_of_the_wrong_shape_are_refused(n, soft, honest, info):
    y = honest.labels.numpy()
    if soft:
        k = info.num_classes + n  # a column count other than the dataset's classes
        bad = np.full((len(y), max(1, k)), 1.0 / max(1, k), dtype=np.float32)
    else:
        bad = np.resize(y, max(1, len(y) + n))
    refused(with_arrays(client_reply(honest), y=bad), info, "labels have shape")


@PROPERTY
@given(
    value=st.sampled_from([math.nan, math.inf, -math.inf]),
    where=st.integers(0, 10**9),
    labels=st.booleans(),
)
def test_nan_or_inf_anywhere_is_refused(value, where, labels, honest, info):
    if labels:  # soft labels with one non-finite entry
        y = np.eye(info.num_classes, dtype=np.float32)[honest.labels.numpy()]
        y.reshape(-1)[where % y.size] = value
        content = with_arrays(client_reply(honest), y=y)
    else:
        x = honest.images.numpy().copy()
        x.reshape(-1)[where % x.size] = value
        content = with_arrays(client_reply(honest), x=x)
    refused(content, info, "NaN|infinite|finite|sum")


@PROPERTY
@given(scale=st.floats(1e3, 1e30), where=st.integers(0, 10**9), sign=st.sampled_from([1, -1]))
def test_finite_absurd_image_values_are_refused(scale, where, sign, honest, info):
    x = honest.images.numpy().copy()
    lo, hi = plausible_range(info)
    x.reshape(-1)[where % x.size] = np.float32(sign * scale * (hi - lo))
    refused(with_arrays(client_reply(honest), x=x), info, "outside the plausible range")


@PROPERTY
@given(label=st.one_of(st.integers(-(2**62), -1), st.integers(10, 2**62)), where=st.integers(0, 99))
def test_a_label_out_of_range_is_refused(label, where, honest, info):
    y = honest.labels.numpy().copy()
    y[where % len(y)] = label
    refused(with_arrays(client_reply(honest), y=y), info, "labels must lie in")


@PROPERTY
@given(cls=st.integers(0, 9), extra=st.integers(1, 5))
def test_too_many_images_of_one_class_are_refused(cls, extra, honest, info):
    x = np.repeat(honest.images.numpy()[:1], IPC + extra, axis=0)
    y = np.full(IPC + extra, cls, dtype=np.int64)
    refused(with_arrays(client_reply(honest), x=x, y=y), info, "per class")


@PROPERTY
@given(missing=st.sampled_from(["x", "y", "synthetic"]), extra=st.text("abz_", min_size=1))
def test_missing_and_extra_arrays_are_refused(missing, extra, honest, info):
    content = client_reply(honest)
    if missing == "synthetic":
        del content["synthetic"]
        refused(content, info, "no 'synthetic'")
    else:
        refused(with_arrays(content, **{missing: None}), info, f"'{missing}' is missing")
    if extra not in ("x", "y"):
        content = with_arrays(client_reply(honest), **{extra: honest.labels.numpy()})
        refused(content, info, "unexpected arrays")


@PROPERTY
@given(short=st.integers(1, 10**6))
def test_an_oversized_reply_is_refused(short, honest, info):
    content = client_reply(honest)
    size = honest.images.numpy().nbytes + honest.labels.numpy().nbytes
    refused(content, info, "byte cap", max_bytes=max(0, size - short))


@PROPERTY
@given(which=st.sampled_from(["x", "y"]), cut=st.integers(1, 10**6), where=st.integers(0, 200))
def test_truncated_or_corrupted_bytes_are_refused_or_decode_to_a_valid_set(
    which, cut, where, honest, info
):
    arr = Array(honest.to_arrays()[which])
    data = arr.data
    truncated = Array(dtype=arr.dtype, shape=arr.shape, stype=arr.stype, data=data[: -cut or 1])
    refused(with_arrays(client_reply(honest), **{which: truncated}), info)
    # one corrupted byte of the .npy header: refused, or (a harmless byte) the same set
    pos = where % min(len(data), 128)
    blob = bytearray(data)
    blob[pos] ^= 0x55
    corrupt = Array(dtype=arr.dtype, shape=arr.shape, stype=arr.stype, data=bytes(blob))
    content = with_arrays(client_reply(honest), **{which: corrupt})
    try:
        syn = check(content, info).syn
    except ReplyError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip()
    else:
        assert torch.equal(syn.images, honest.images) and torch.equal(syn.labels, honest.labels)


@PROPERTY
@given(lie=st.sampled_from(["shape", "dtype"]), n=st.integers(1, 5))
def test_declared_facts_that_the_bytes_contradict_are_refused(lie, n, honest, info):
    y = honest.labels.numpy()
    arr = Array(y)
    if lie == "shape":
        shape, dtype = (len(y) - n,), arr.dtype
        x = Array(np.ascontiguousarray(honest.images.numpy()[: len(y) - n]))
    else:  # int64 labels declared as float32 N×K
        shape, dtype = (len(y), info.num_classes), "float32"
        x = Array(honest.images.numpy())
    liar = Array(dtype=dtype, shape=shape, stype=arr.stype, data=arr.data)
    refused(with_arrays(client_reply(honest), x=x, y=liar), info, "declares|cannot be decoded")


IMPOSSIBLE = {
    "epsilon": st.floats(max_value=-1e-9, allow_infinity=False),
    "rho": st.floats(max_value=-1e-9, allow_infinity=False),
    "delta": st.one_of(st.floats(max_value=-1e-12), st.floats(min_value=1.0)).filter(math.isfinite),
    "seconds": st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=MAX_SECONDS * 1.001)),
    "num-examples": st.one_of(
        st.integers(-(2**62), -1), st.integers(MAX_COUNT + 1, 2**62), st.floats(0.01, 0.99)
    ),
    "num-synthetic": st.one_of(st.integers(-(2**62), -1), st.floats(7.01, 7.99)),
    "bytes": st.integers(min_value=MAX_COUNT + 1, max_value=2**62),
    "private-steps": st.integers(max_value=-1, min_value=-(2**62)),
    "partition-id": st.integers(max_value=-1, min_value=-(2**62)),
    "noise-secure": st.one_of(st.integers(2, 100), st.integers(-100, -1), st.just(0.5)),
}


@PROPERTY
@given(data=st.data(), key=st.sampled_from(sorted(IMPOSSIBLE)))
def test_impossible_client_reported_figures_are_refused(data, key, honest, info):
    value = data.draw(IMPOSSIBLE[key])
    metrics = {"num-examples": 100, "seconds": 1.0, key: value}
    content = client_reply(honest)
    content["metrics"] = MetricRecord(metrics)
    refused(content, info, f"'{key}'|{key}")
    # a non-finite figure, or a list, is refused whatever the key
    content["metrics"] = MetricRecord({**metrics, key: math.nan})
    refused(content, info, "finite")
    content["metrics"] = MetricRecord({**metrics, key: [1, 2]})
    refused(content, info, "list")
