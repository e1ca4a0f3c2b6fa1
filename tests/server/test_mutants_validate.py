"""Reply validation at its exact boundaries: each test here kills mutants of ``server/validate.py``
that survived the other tests (experiments/results/mutation/validate.txt): a cap that moves by
one, ``<=`` turned into ``<``, ``or`` into ``and``. Every boundary value is accepted and the next
one refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from clients.task import model_to_record, set_to_record
from fedistill.federated import client_distill
from fedistill.models import build_model
from server.validate import (
    MAX_COUNT,
    MAX_PROVENANCE_BYTES,
    MAX_SECONDS,
    ReplyError,
    _check_metric,
    validate_synthetic_reply,
    validate_update_reply,
)

IPC = 2
CAP = 1 << 20


@pytest.fixture(scope="module")
def honest(digits_train):
    return client_distill(digits_train, "random", IPC, seed=0)


def reply(syn, metrics: dict | None = None, provenance: str | None = None) -> RecordDict:
    content = RecordDict({"synthetic": set_to_record(syn)})
    if metrics is not None:
        content["metrics"] = MetricRecord(metrics)
    if provenance is not None:
        content["provenance"] = ConfigRecord({"json": provenance})
    return content


def check(content, info, max_ipc=IPC, max_bytes=CAP):
    return validate_synthetic_reply(content, info, max_ipc=max_ipc, max_bytes=max_bytes)


def test_the_caps_themselves_are_what_the_docs_say():
    assert MAX_COUNT == 10**9
    assert MAX_SECONDS == 7 * 24 * 3600  # one week
    assert MAX_PROVENANCE_BYTES == 64 * 1024


@pytest.mark.parametrize(
    ("key", "ok", "bad"),
    [
        ("num-examples", [0, 1, MAX_COUNT], [-1, MAX_COUNT + 1]),
        ("bytes", [0, MAX_COUNT], [-1, MAX_COUNT + 1]),
        ("private-steps", [0, MAX_COUNT], [-1, MAX_COUNT + 1]),
        ("seconds", [0.0, float(MAX_SECONDS)], [-1e-9, MAX_SECONDS + 1.0]),
        ("delta", [0.0, 0.999], [-1e-12, 1.0]),
        ("epsilon", [0.0, 1e9], [-1e-12]),
        ("rho", [0.0], [-1e-12]),
        ("noise-secure", [0, 1], [2, -1]),
    ],
)
def test_each_client_figure_is_accepted_up_to_its_bound_and_refused_past_it(
    key, ok, bad, honest, digits_train
):
    for value in ok:
        metrics = check(reply(honest, {key: value}), digits_train.info).metrics
        assert metrics[key.replace("-", "_")] == value
    for value in bad:
        with pytest.raises(ReplyError, match=key):
            check(reply(honest, {key: value}), digits_train.info)


def test_a_figure_that_is_not_a_number_is_refused_even_outside_a_metric_record():
    # MetricRecord itself refuses bools and strings; the check does not lean on that
    for value in (True, False, "100", None):
        assert "must be a number" in _check_metric("num-examples", value)
    assert _check_metric("num-examples", 100) is None


def test_no_metric_record_or_a_record_of_another_kind_reports_only_the_servers_count(
    honest, digits_train
):
    valid = check(reply(honest), digits_train.info)
    assert valid.metrics == {"num_synthetic": len(honest)} and valid.client_reported == []
    content = reply(honest)
    content["metrics"] = ConfigRecord({"num-examples": -5})  # not a MetricRecord: ignored
    assert check(content, digits_train.info).metrics == {"num_synthetic": len(honest)}


def test_the_payload_cap_counts_both_arrays_and_is_inclusive(honest, digits_train):
    record = set_to_record(honest)
    size = len(record["x"].data) + len(record["y"].data)
    assert size > honest.nbytes()  # the .npy headers count too
    check(reply(honest), digits_train.info, max_bytes=size)  # exactly at the cap
    with pytest.raises(ReplyError, match=f"payload of {size} bytes"):
        check(reply(honest), digits_train.info, max_bytes=size - 1)


def test_one_image_is_enough_and_none_or_one_too_many_is_refused(honest, digits_train):
    x, y = honest.images.numpy(), honest.labels.numpy()
    one = ArrayRecord({"x": Array(x[:1].copy()), "y": Array(y[:1].copy())})
    content = reply(honest)
    content["synthetic"] = one
    assert len(check(content, digits_train.info).syn) == 1
    empty = ArrayRecord({"x": Array(x[:0].copy()), "y": Array(y[:0].copy())})
    content["synthetic"] = empty
    with pytest.raises(ReplyError, match="0 images; between 1 and 20 allowed"):
        check(content, digits_train.info)
    many = ArrayRecord({"x": Array(np.concatenate([x, x[:1]])), "y": Array(np.append(y, y[0]))})
    content["synthetic"] = many
    with pytest.raises(ReplyError, match="21 images; between 1 and 20 allowed"):
        check(content, digits_train.info)


def test_provenance_is_read_up_to_its_size_cap_and_ignored_past_it(honest, digits_train):
    def padded(length: int) -> str:
        text = json.dumps({"method": "dm", "ipc": 7, "pad": ""})
        return text.replace('"pad": ""', '"pad": "' + "x" * (length - len(text)) + '"')

    at_cap = padded(MAX_PROVENANCE_BYTES)
    assert len(at_cap) == MAX_PROVENANCE_BYTES
    meta = check(reply(honest, provenance=at_cap), digits_train.info).syn.meta
    assert meta["method"] == "dm" and meta["ipc"] == 7
    meta = check(reply(honest, provenance=padded(MAX_PROVENANCE_BYTES + 1)), digits_train.info)
    assert meta.syn.meta["method"] == "unknown"
    # a provenance that is not even a string is ignored, not a crash
    content = reply(honest)
    content["provenance"] = ConfigRecord({"json": 5})
    meta = check(content, digits_train.info).syn.meta
    assert (meta["method"], meta["ipc"], meta["seed"], meta["iterations"]) == ("unknown", 0, 0, 0)


# ------------------------------------------------------------------------- FedAvg updates


@pytest.fixture(scope="module")
def reference(digits_train):
    return model_to_record(build_model("convnet", digits_train.info, width=8))


def update(record, metrics=None) -> RecordDict:
    return RecordDict({"arrays": record, "metrics": MetricRecord(metrics or {"num-examples": 1})})


def check_update(content, reference, max_bytes=CAP):
    return validate_update_reply(content, reference, arrays_key="arrays", max_bytes=max_bytes)


def test_update_needs_exactly_one_array_record_and_one_metric_record(reference):
    assert check_update(update(reference), reference).metrics == {"num_examples": 1}
    content = update(reference)
    content["extra"] = reference
    with pytest.raises(ReplyError, match="exactly one array record"):
        check_update(content, reference)
    content = update(reference)
    content["more-metrics"] = MetricRecord({"num-examples": 3})
    with pytest.raises(ReplyError, match="exactly one metric record"):
        check_update(content, reference)
    content = update(reference)
    del content["metrics"]
    with pytest.raises(ReplyError, match="exactly one metric record"):
        check_update(content, reference)


def test_update_without_num_examples_is_refused_and_the_cap_is_inclusive(reference):
    with pytest.raises(ReplyError, match="num-examples must be a positive number"):
        check_update(update(reference, {"seconds": 1.0}), reference)
    size = reference.count_bytes()
    check_update(update(reference), reference, max_bytes=size)
    with pytest.raises(ReplyError, match="byte cap"):
        check_update(update(reference), reference, max_bytes=size - 1)
