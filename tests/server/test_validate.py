"""Reply validation: every malformed synthetic set or model update is refused with a reason."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from clients.client_app import tamper
from clients.task import model_to_record, set_to_record
from fedistill.federated import client_distill
from fedistill.models import build_model
from fedistill.wire import RunSettings
from server.validate import ReplyError, validate_synthetic_reply, validate_update_reply

IPC = 3
CAP = 1 << 20


@pytest.fixture(scope="module")
def honest(digits_train):
    return client_distill(digits_train, "random", IPC, seed=0)


def reply(syn, **extra) -> RecordDict:
    content = RecordDict(
        {
            "synthetic": set_to_record(syn),
            "metrics": MetricRecord({"num-examples": 100, "seconds": 1.5, "partition-id": 2}),
            "provenance": ConfigRecord({"json": json.dumps(syn.meta)}),
        }
    )
    for key, value in extra.items():
        content[key] = value
    return content


def check(content, info, max_ipc=IPC, max_bytes=CAP):
    return validate_synthetic_reply(content, info, max_ipc=max_ipc, max_bytes=max_bytes)


def test_accepts_a_good_set(honest, digits_train):
    valid = check(reply(honest), digits_train.info)
    assert torch.equal(valid.syn.images, honest.images)
    assert torch.equal(valid.syn.labels, honest.labels)
    assert valid.syn.meta["method"] == "random"
    assert valid.metrics == {
        "num_examples": 100,
        "seconds": 1.5,
        "partition_id": 2,
        "num_synthetic": len(honest),  # counted by the server, not taken from the client
    }
    assert valid.client_reported == ["num_examples", "seconds"]
    assert valid.payload_bytes >= honest.nbytes()


def test_server_facts_override_the_clients_metadata(honest, digits_train):
    lying = dict(honest.meta, dataset="cifar10", mean=[9.0], num_classes=3)
    content = reply(honest, provenance=ConfigRecord({"json": json.dumps(lying)}))
    meta = check(content, digits_train.info).syn.meta
    assert meta["dataset"] == "digits" and meta["num_classes"] == 10
    assert meta["mean"] == list(digits_train.info.mean)
    # no provenance at all is fine too
    content = reply(honest)
    del content["provenance"]
    assert check(content, digits_train.info).syn.meta["method"] == "unknown"


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("nan", "NaN"),
        ("shape", "shape"),
        ("dtype", "float32"),
        ("labels", "labels must lie in"),
        ("perclass", "images"),
        ("oversize", "byte cap"),
        ("missing", "missing"),
    ],
)
def test_rejects_tampered_replies(kind, reason, honest, digits_train):
    s = RunSettings(max_upload_mb=0.05)
    content = tamper(reply(honest), kind, s)
    with pytest.raises(ReplyError, match=reason):
        check(content, digits_train.info, max_bytes=s.max_bytes)


def test_rejects_finite_images_far_outside_the_normalised_range(honest, digits_train):
    # finite, so every earlier check passes; one such client took a pooled model to chance
    x = np.full(tuple(honest.images.shape), 1e30, dtype=np.float32)
    content = reply(
        honest, synthetic=ArrayRecord({"x": Array(x), "y": Array(honest.labels.numpy())})
    )
    with pytest.raises(ReplyError, match="outside the plausible range"):
        check(content, digits_train.info)
    # the honest images, a little beyond the pixel range (as optimised sets are), pass
    x = honest.images.numpy() * 1.5
    content = reply(
        honest, synthetic=ArrayRecord({"x": Array(x), "y": Array(honest.labels.numpy())})
    )
    check(content, digits_train.info)


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ({"num-examples": 100, "epsilon": -5.0}, "epsilon"),
        ({"num-examples": 100, "delta": 1.0}, "delta"),
        ({"num-examples": 100, "rho": -1.0}, "rho"),
        ({"num-examples": 1e18}, "num-examples"),
        ({"num-examples": 2.5}, "num-examples"),
        ({"num-examples": -3}, "num-examples"),
        ({"num-examples": 100, "seconds": -1.0}, "seconds"),
        ({"num-examples": 100, "seconds": float("inf")}, "finite"),
        ({"num-examples": 100, "bytes": 1e15}, "bytes"),
        ({"num-examples": 100, "noise-secure": 2}, "noise-secure"),
        ({"num-examples": 100, "private-steps": -1}, "private-steps"),
    ],
)
def test_impossible_client_reported_metrics_are_refused(metrics, reason, honest, digits_train):
    content = reply(honest, metrics=MetricRecord(metrics))
    with pytest.raises(ReplyError, match=reason):
        check(content, digits_train.info)


def test_valid_privacy_metrics_are_kept_as_client_reported(honest, digits_train):
    m = {"num-examples": 100, "epsilon": 3.0, "delta": 1e-5, "rho": 0.5, "noise-secure": 0}
    m["private-steps"] = 40
    valid = check(reply(honest, metrics=MetricRecord(m)), digits_train.info)
    assert valid.metrics["epsilon"] == 3.0 and valid.metrics["delta"] == 1e-5
    assert valid.metrics["noise_secure"] == 0 and valid.metrics["private_steps"] == 40
    assert set(valid.client_reported) == {
        "num_examples",
        "epsilon",
        "delta",
        "rho",
        "noise_secure",
        "private_steps",
    }


def test_impossible_privacy_facts_in_the_provenance_are_refused(honest, digits_train):
    lying = dict(honest.meta, privacy={"epsilon": -5.0, "delta": 1e-5})
    content = reply(honest, provenance=ConfigRecord({"json": json.dumps(lying)}))
    with pytest.raises(ReplyError, match="epsilon"):
        check(content, digits_train.info)


def test_rejects_too_many_images_per_class_within_total(honest, digits_train):
    # as many images as allowed in total, but all of one class
    x = honest.images.numpy()[: IPC * 2]
    y = np.zeros(len(x), dtype=np.int64)
    content = reply(honest, synthetic=ArrayRecord({"x": Array(x), "y": Array(y)}))
    with pytest.raises(ReplyError, match="per class"):
        check(content, digits_train.info)


def test_rejects_missing_record_and_extra_arrays(honest, digits_train):
    content = reply(honest)
    del content["synthetic"]
    with pytest.raises(ReplyError, match="no 'synthetic'"):
        check(content, digits_train.info)
    arrays = honest.to_arrays()
    extra = ArrayRecord({"x": Array(arrays["x"]), "y": Array(arrays["y"]), "z": Array(arrays["y"])})
    with pytest.raises(ReplyError, match="unexpected arrays"):
        check(reply(honest, synthetic=extra), digits_train.info)


def test_rejects_label_dtype_and_soft_label_shape(honest, digits_train):
    x = honest.images.numpy()
    bad_dtype = ArrayRecord({"x": Array(x), "y": Array(honest.labels.numpy().astype(np.int32))})
    with pytest.raises(ReplyError, match="labels must be int64 or float32"):
        check(reply(honest, synthetic=bad_dtype), digits_train.info)
    soft = np.full((len(x), 7), 1 / 7, dtype=np.float32)  # 7 columns, dataset has 10 classes
    bad_soft = ArrayRecord({"x": Array(x), "y": Array(soft)})
    with pytest.raises(ReplyError, match="labels have shape"):
        check(reply(honest, synthetic=bad_soft), digits_train.info)


def test_accepts_soft_labels(honest, digits_train):
    x = honest.images.numpy()
    soft = np.eye(10, dtype=np.float32)[honest.labels.numpy()] * 0.9 + 0.01
    content = reply(honest, synthetic=ArrayRecord({"x": Array(x), "y": Array(soft)}))
    syn = check(content, digits_train.info).syn
    assert syn.meta["label_kind"] == "soft" and syn.labels.shape == (len(x), 10)


def test_declared_shape_must_match_the_bytes(honest, digits_train):
    x = honest.images.numpy()
    arr = Array(x)
    liar = Array(dtype="float32", shape=(len(x) - 1, 1, 8, 8), stype=arr.stype, data=arr.data)
    y = Array(honest.labels.numpy()[:-1])
    content = reply(honest, synthetic=ArrayRecord({"x": liar, "y": y}))
    with pytest.raises(ReplyError, match="declares"):
        check(content, digits_train.info)


def test_pickled_payload_is_never_loaded(honest, digits_train):
    buf = io.BytesIO()
    np.save(buf, np.array([object()], dtype=object), allow_pickle=True)
    evil = Array(
        dtype="float32",
        shape=tuple(honest.images.shape),
        stype="numpy.ndarray",
        data=buf.getvalue(),
    )
    content = reply(honest, synthetic=ArrayRecord({"x": evil, "y": Array(honest.labels.numpy())}))
    with pytest.raises(ReplyError, match="cannot be decoded"):
        check(content, digits_train.info)
    raw = Array(
        dtype="float32", shape=tuple(honest.images.shape), stype="pickle", data=pickle.dumps([1])
    )
    content = reply(honest, synthetic=ArrayRecord({"x": raw, "y": Array(honest.labels.numpy())}))
    with pytest.raises(ReplyError, match="serialisation"):
        check(content, digits_train.info)


def test_wrong_dataset_shape(honest, digits_train):
    x = np.zeros((len(honest), 1, 28, 28), dtype=np.float32)
    content = reply(
        honest, synthetic=ArrayRecord({"x": Array(x), "y": Array(honest.labels.numpy())})
    )
    with pytest.raises(ReplyError, match="images have shape"):
        check(content, digits_train.info)


# ------------------------------------------------------------------------- FedAvg updates


@pytest.fixture(scope="module")
def reference(digits_train):
    return model_to_record(build_model("convnet", digits_train.info, width=8))


def update(record, n=50):
    return RecordDict({"arrays": record, "metrics": MetricRecord({"num-examples": n})})


def test_update_accepted_and_checked(reference):
    valid = validate_update_reply(update(reference), reference, arrays_key="arrays", max_bytes=CAP)
    assert valid.metrics["num_examples"] == 50 and valid.payload_bytes == reference.count_bytes()

    arrays = {k: v.numpy() for k, v in reference.items()}
    name = next(iter(arrays))
    nan = dict(arrays)
    nan[name] = arrays[name].copy()
    nan[name].reshape(-1)[0] = np.nan
    cases = {
        "NaN": ArrayRecord({k: Array(v) for k, v in nan.items()}),
        "expected": ArrayRecord(
            {k: Array(v.astype(np.float64) if k == name else v) for k, v in arrays.items()}
        ),
        "names": ArrayRecord({k: Array(v) for k, v in arrays.items() if k != name}),
    }
    for reason, record in cases.items():
        with pytest.raises(ReplyError, match=reason):
            validate_update_reply(update(record), reference, arrays_key="arrays", max_bytes=CAP)
    with pytest.raises(ReplyError, match="byte cap"):
        validate_update_reply(update(reference), reference, arrays_key="arrays", max_bytes=100)
    with pytest.raises(ReplyError, match="num-examples"):
        validate_update_reply(update(reference, n=0), reference, arrays_key="arrays", max_bytes=CAP)
    with pytest.raises(ReplyError, match="num-examples"):  # over the cap: refused, not clipped
        validate_update_reply(
            update(reference, n=10**18), reference, arrays_key="arrays", max_bytes=CAP
        )
    valid = validate_update_reply(update(reference), reference, arrays_key="arrays", max_bytes=CAP)
    assert valid.client_reported == ["num_examples"]


def _haba_set(digits_train, h=2, c=4, k=3):
    from fedistill import factorised
    from fedistill.synthetic import SyntheticSet

    torch.manual_seed(0)
    info = digits_train.info
    meta = {
        "dataset": info.name,
        "mean": list(info.mean),
        "std": list(info.std),
        "method": "haba",
        "ipc": 1,
        "seed": 0,
        "iterations": 0,
        "num_classes": info.num_classes,
        "decoder": "haba",
        "haba": {"hallucinators": h, "channels": c, "kernel": k},
    }
    shapes = factorised.extra_shapes(meta, info.shape[0])
    extras = {n: torch.randn(s) * 0.1 for n, s in shapes.items()}
    images = torch.randn(info.num_classes, *info.shape) * 0.3
    return SyntheticSet(images, torch.arange(info.num_classes), meta, extras)


def test_a_haba_set_travels_with_exactly_its_declared_hallucinators(digits_train):
    """HaBa over Flower: the bases and the hallucinators' weights arrive bit for bit; the
    server decodes them; a missing, extra, misshapen or undeclared weight array is refused."""
    from fedistill.factorised import decode

    syn = _haba_set(digits_train)
    valid = check(reply(syn), digits_train.info, max_ipc=1)
    assert set(valid.syn.extras) == set(syn.extras)
    for name, tensor in syn.extras.items():
        assert torch.equal(valid.syn.extras[name], tensor)
    assert len(decode(valid.syn)) == 2 * len(syn)  # two hallucinators per base
    assert valid.payload_bytes >= syn.nbytes()

    def mutated(change):
        content = reply(syn)
        arrays = dict(content["synthetic"].items())
        change(arrays)
        content["synthetic"] = ArrayRecord(arrays)
        return content

    cases = [
        (lambda a: a.pop("haba.scale"), "not the decoder's"),
        (lambda a: a.update({"haba.extra": a["haba.scale"]}), "not the decoder's"),
        (
            lambda a: a.update({"haba.scale": Array(np.zeros((3, 4), np.float32))}),
            r"'haba.scale' is float32\(3, 4\), expected float32\(2, 4\)",
        ),
        (
            lambda a: a.update({"haba.scale": Array(np.zeros((2, 4), np.float64))}),
            "expected float32",
        ),
    ]
    for change, message in cases:
        with pytest.raises(ReplyError, match=message):
            check(mutated(change), digits_train.info, max_ipc=1)
    plain = reply(syn)
    plain["provenance"] = ConfigRecord({"json": json.dumps({"method": "random"})})
    with pytest.raises(ReplyError, match="unexpected arrays"):
        check(plain, digits_train.info, max_ipc=1)  # weights no decoder declares
