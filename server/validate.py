"""Every reply is checked before the server uses it; a bad one is dropped with its reason.

FedDM replies (a synthetic set) pass, in order:

1. the records exist: ``"synthetic"`` holding exactly ``x`` and ``y`` — and, for a HaBa set,
   exactly the hallucinator arrays its provenance declares (names, float32, shapes);
2. declared facts before any byte is decoded: numpy serialisation, dtypes (``x`` float32,
   ``y`` int64 or float32), shapes against the dataset (N×C×H×W, N or N×K labels, at most
   ``max_ipc`` × classes images), and the byte cap on the payload;
3. the decoded arrays (``np.load`` without pickle) match what was declared;
4. ``SyntheticSet.from_arrays``: finite values, label range, soft-label rows;
5. :func:`fedistill.federated.check_client_set`: dataset, image shape, images per class,
   bytes, image values inside the dataset's plausible normalised range (pixel range ± ten
   widths; the bound is justified in :func:`fedistill.federated.plausible_range`), valid
   privacy facts in the provenance.

The client's metrics (num-examples, seconds, ε, δ, ρ, ...) are checked for validity
(:func:`reply_metrics`) and a reply with an impossible one is refused; the valid ones are
still only *client-reported*, and the results say so (``client_reported``). The server counts
the synthetic images itself.

The server's own facts (dataset name, normalisation, classes) go into the set's metadata;
the client's provenance is kept only for the record. FedAvg replies (a model update) are
checked for names, shapes, dtypes, finiteness and the byte cap against the global model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from fedistill.data import DatasetInfo
from fedistill.errors import FedistillError
from fedistill.factorised import extra_shapes
from fedistill.federated import check_client_set
from fedistill.synthetic import SyntheticSet
from fedistill.wire import METRICS_KEY, PROVENANCE_KEY, SYNTHETIC_KEY

MAX_PROVENANCE_BYTES = 64 * 1024
METRIC_KEYS = (
    "num-examples",
    "num-synthetic",
    "seconds",
    "bytes",
    "epsilon",
    "delta",
    "rho",
    "noise-secure",  # 1: the DP noise came from a secure source; 0: replayable, no guarantee
    "private-steps",
)


class ReplyError(FedistillError, ValueError):
    """A reply the server will not use; the message is the reason recorded."""


@dataclass
class ValidReply:
    syn: SyntheticSet | None
    metrics: dict[str, Any] = field(default_factory=dict)
    arrays: ArrayRecord | None = None
    payload_bytes: int = 0
    client_reported: list[str] = field(default_factory=list)  # metric names not verified


def _array(record: ArrayRecord, name: str) -> Array:
    if name not in record:
        raise ReplyError(f"array '{name}' is missing")
    arr = record[name]
    if not isinstance(arr, Array):
        raise ReplyError(f"'{name}' is not an array")
    if arr.stype != "numpy.ndarray":
        raise ReplyError(f"array '{name}' has serialisation '{arr.stype}', expected numpy")
    return arr


def _decode(arr: Array, name: str) -> np.ndarray:
    try:
        value = arr.numpy()
    except Exception as exc:  # np.load(allow_pickle=False) refused or failed
        raise ReplyError(f"array '{name}' cannot be decoded ({type(exc).__name__})") from None
    if str(value.dtype) != arr.dtype or tuple(value.shape) != tuple(arr.shape):
        raise ReplyError(
            f"array '{name}' declares {arr.dtype}{tuple(arr.shape)} but holds "
            f"{value.dtype}{tuple(value.shape)}"
        )
    return value


# Caps on client-reported figures: far above any honest value, so only nonsense is refused.
MAX_COUNT = 10**9  # examples, synthetic images, bytes, partition ids
MAX_SECONDS = 7 * 24 * 3600.0  # one week of client work per round

# What each reported metric must be; a reply breaking one is refused with the reason.
_COUNT_KEYS = ("num-examples", "num-synthetic", "bytes", "partition-id", "private-steps")


def _check_metric(key: str, value: Any) -> str | None:
    """Why a client-reported metric is invalid, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"metric '{key}' must be a number, got {type(value).__name__}"
    if not math.isfinite(value):
        return f"metric '{key}' must be finite, got {value}"
    if key in _COUNT_KEYS:
        if value != int(value) or not 0 <= value <= MAX_COUNT:
            return f"metric '{key}' must be an integer in [0, {MAX_COUNT}], got {value}"
    elif key == "seconds":
        if not 0 <= value <= MAX_SECONDS:
            return f"metric 'seconds' must lie in [0, {MAX_SECONDS:g}], got {value}"
    elif key == "delta":
        if not 0 <= value < 1:
            return f"metric 'delta' must lie in [0, 1), got {value}"
    elif key in ("epsilon", "rho") and value < 0:
        return f"metric '{key}' must be ≥ 0, got {value}"
    elif key == "noise-secure" and value not in (0, 1):
        return f"metric 'noise-secure' must be 0 or 1, got {value}"
    return None


def reply_metrics(content: RecordDict) -> dict[str, Any]:
    """The client's metrics: only known keys, each checked for validity (counts are integers
    in [0, MAX_COUNT], seconds in [0, one week], ε ≥ 0, δ ∈ [0, 1), ρ ≥ 0, all finite).
    ReplyError names the first invalid one. Every value here is *client-reported*: the server
    checks that it is possible, not that it is true."""
    out: dict[str, Any] = {}
    if METRICS_KEY in content and isinstance(content[METRICS_KEY], MetricRecord):
        rec = content[METRICS_KEY]
        for key in (*METRIC_KEYS, "partition-id"):
            if key not in rec:
                continue
            value = rec.get(key)
            if isinstance(value, list):
                raise ReplyError(f"metric '{key}' must be a number, got a list")
            why = _check_metric(key, value)
            if why is not None:
                raise ReplyError(why)
            if key in _COUNT_KEYS:
                value = int(value)
            out[key.replace("-", "_")] = value
    return out


def client_reported(metrics: dict[str, Any], verified: tuple[str, ...] = ()) -> list[str]:
    """The metric names the server took from the client unverified (for the results)."""
    return sorted(k for k in metrics if k not in verified and k != "partition_id")


def validate_synthetic_reply(
    content: RecordDict,
    info: DatasetInfo,
    *,
    max_ipc: int,
    max_bytes: int,
) -> ValidReply:
    """The set in a FedDM reply, decoded and accepted, or ReplyError with the reason it is
    refused: :func:`decode_synthetic_reply`, then the engine's acceptance test
    (:func:`fedistill.federated.check_client_set`), which the ServerApp leaves to the engine."""
    valid = decode_synthetic_reply(content, info, max_ipc=max_ipc, max_bytes=max_bytes)
    try:
        check_client_set(valid.syn, info, max_ipc=max_ipc, max_bytes=max_bytes)
    except FedistillError as exc:
        raise ReplyError(str(exc)) from None
    return valid


def decode_synthetic_reply(
    content: RecordDict,
    info: DatasetInfo,
    *,
    max_ipc: int,
    max_bytes: int,
) -> ValidReply:
    """The set in a FedDM reply as a SyntheticSet, or ReplyError: record layout, sizes, dtypes
    and shapes before any byte is decoded, the client-reported figures, then the set format's
    own validation. Whether the server accepts the set is the engine's call."""
    if SYNTHETIC_KEY not in content.array_records:
        raise ReplyError(f"no '{SYNTHETIC_KEY}' array record in the reply")
    record = content.array_records[SYNTHETIC_KEY]
    extra = sorted(set(record.keys()) - {"x", "y"})
    provenance = _provenance(content)
    want = _declared_extras(provenance, info) if extra else {}
    if not want and extra:
        raise ReplyError(f"unexpected arrays {extra} in '{SYNTHETIC_KEY}'")
    if sorted(want) != extra:
        raise ReplyError(
            f"arrays {extra} in '{SYNTHETIC_KEY}' are not the decoder's {sorted(want)}"
        )
    ax, ay = _array(record, "x"), _array(record, "y")
    extra_arrays = {name: _array(record, name) for name in extra}
    for name, arr in extra_arrays.items():
        if arr.dtype != "float32" or tuple(arr.shape) != want[name]:
            raise ReplyError(
                f"'{name}' is {arr.dtype}{tuple(arr.shape)}, expected float32{want[name]}"
            )
    size = len(ax.data) + len(ay.data) + sum(len(a.data) for a in extra_arrays.values())
    if size > max_bytes:
        raise ReplyError(f"payload of {size} bytes is over the {max_bytes} byte cap")
    if ax.dtype != "float32":
        raise ReplyError(f"images must be float32, got {ax.dtype}")
    if ay.dtype not in ("int64", "float32"):
        raise ReplyError(f"labels must be int64 or float32, got {ay.dtype}")
    xs, ys = tuple(ax.shape), tuple(ay.shape)
    if len(xs) != 4 or xs[1:] != info.shape:
        raise ReplyError(f"images have shape {xs}, expected N×{'×'.join(map(str, info.shape))}")
    n, k = xs[0], info.num_classes
    if not 1 <= n <= max_ipc * k:
        raise ReplyError(f"{n} images; between 1 and {max_ipc * k} allowed")
    want_y = (n,) if ay.dtype == "int64" else (n, k)
    if ys != want_y:
        raise ReplyError(f"labels have shape {ys}, expected {want_y}")
    metrics = reply_metrics(content)  # impossible client-reported figures: refused before decoding
    x, y = _decode(ax, "x"), _decode(ay, "y")
    extras = {name: _decode(arr, name) for name, arr in extra_arrays.items()}
    try:
        syn = SyntheticSet.from_arrays(x, y, _meta(provenance, info, y), extras)
    except FedistillError as exc:
        raise ReplyError(str(exc)) from None
    metrics["num_synthetic"] = len(syn)  # the server counts these itself
    return ValidReply(
        syn,
        metrics,
        payload_bytes=record.count_bytes(),
        client_reported=client_reported(metrics, verified=("num_synthetic",)),
    )


def _declared_extras(provenance: dict[str, Any], info: DatasetInfo) -> dict[str, tuple[int, ...]]:
    """The extra arrays (name → shape) the reply's provenance declares: a HaBa set's
    hallucinator weights; none for any other set."""
    meta = _meta(provenance, info, np.zeros(0, np.int64))
    try:
        return extra_shapes(meta, info.shape[0])
    except FedistillError as exc:
        raise ReplyError(str(exc)) from None


def _provenance(content: RecordDict) -> dict[str, Any]:
    """The client's provenance record as a dict: ``{}`` when absent, over the size cap, not JSON
    or not an object (it is only ever kept for the record, under the server's own facts)."""
    if PROVENANCE_KEY not in content.config_records:
        return {}
    raw = content.config_records[PROVENANCE_KEY].get("json")
    if not isinstance(raw, str) or len(raw) > MAX_PROVENANCE_BYTES:
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _meta(provenance: dict[str, Any], info: DatasetInfo, y: np.ndarray) -> dict[str, Any]:
    """The set's metadata: the server's facts about the dataset over the client's provenance."""
    meta = dict(provenance)
    label_kind = meta.get("label_kind")
    if y.dtype == np.int64:
        label_kind = "hard"
    elif label_kind not in ("soft", "targets"):
        label_kind = "soft"
    meta.setdefault("method", "unknown")
    meta.setdefault("ipc", 0)
    meta.setdefault("seed", 0)
    meta.setdefault("iterations", 0)
    meta.update(
        dataset=info.name,
        mean=list(info.mean),
        std=list(info.std),
        num_classes=info.num_classes,
        label_kind=label_kind,
    )
    return meta


def validate_update_reply(
    content: RecordDict, reference: ArrayRecord, *, arrays_key: str, max_bytes: int
) -> ValidReply:
    """A FedAvg model update: same names, dtypes and shapes as the global model, finite,
    under the byte cap, and a positive ``num-examples``."""
    if arrays_key not in content.array_records or len(content.array_records) != 1:
        raise ReplyError(f"expected exactly one array record '{arrays_key}'")
    record = content.array_records[arrays_key]
    if set(record.keys()) != set(reference.keys()):
        raise ReplyError("model arrays do not match the global model's names")
    size = record.count_bytes()
    if size > max_bytes:
        raise ReplyError(f"payload of {size} bytes is over the {max_bytes} byte cap")
    for name, ref in reference.items():
        arr = _array(record, name)
        if arr.dtype != ref.dtype or tuple(arr.shape) != tuple(ref.shape):
            raise ReplyError(
                f"array '{name}' is {arr.dtype}{tuple(arr.shape)}, expected "
                f"{ref.dtype}{tuple(ref.shape)}"
            )
        value = _decode(arr, name)
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ReplyError(f"array '{name}' contains NaN or infinite values")
    metrics = reply_metrics(content)
    if METRICS_KEY not in content.metric_records or len(content.metric_records) != 1:
        raise ReplyError(f"expected exactly one metric record '{METRICS_KEY}'")
    if not metrics.get("num_examples", 0) > 0:
        raise ReplyError("num-examples must be a positive number")
    return ValidReply(
        None,
        metrics,
        arrays=record,
        payload_bytes=size,
        client_reported=client_reported(metrics),
    )
