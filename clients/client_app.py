"""The fedistill ClientApp: distill the local partition, send only the synthetic set.

On a ``train`` message the client reads the run settings (``context.run_config``) and its
partition (``context.node_config``: ``partition-id``, ``num-partitions``), then

* FedDM (``config.strategy`` = ``feddm`` / ``feddm-robust``): distills its data with the
  configured method, against the global model when the message carries one (``"arrays"``),
  and replies with the set (``"synthetic"``), its metrics and its provenance;
* FedAvg (``config.strategy`` = ``fedavg``): trains the global model a few epochs on its real
  data and replies with the updated ``"arrays"`` and ``"metrics"``.

A failure becomes an error reply (the server records it and goes on), never a crash.

A private method keeps **one privacy ledger per client for the whole run**: its budget is
planned for the run's ``rounds``, and the ledger travels from round to round in the node's
``context.state`` (``"privacy-ledger"``). A client asked for a round its budget cannot pay for
replies with an error saying so (PrivacyBudgetExceeded); one that finds no ledger in a round
after the first refuses rather than start a fresh budget.

``malicious`` in the run config is a test hook: ``"1:nan,2:shape"`` makes partition 1 reply
with NaN images and partition 2 with a wrong image shape. Kinds: ``nan``, ``shape``,
``dtype``, ``labels`` (out of range), ``perclass`` (too many images per class), ``oversize``
(over the byte cap), ``missing`` (no ``y``), ``scale`` (finite images × 1e30), ``raise`` (an
exception in the client).
"""

from __future__ import annotations

import inspect
import json
import logging
import time

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.error import Error
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from clients.task import model_to_record, record_to_model, set_to_record
from fedistill.distill import get_method
from fedistill.errors import PrivacyBudgetExceeded
from fedistill.federated import client_distill, client_seed, local_train, set_metrics
from fedistill.privacy import PrivacyLedger, ledger_of
from fedistill.wire import (
    ARRAYS_KEY,
    CONFIG_KEY,
    METRICS_KEY,
    PROVENANCE_KEY,
    SYNTHETIC_KEY,
    RunSettings,
    settings_partition,
)

log = logging.getLogger("flwr.fedistill.client")

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round's work for this client (FedDM distillation or FedAvg local SGD)."""
    pid = context.node_config.get("partition-id", "?")
    try:
        settings = RunSettings.from_run_config(context.run_config)
        torch.set_num_threads(max(1, settings.client_threads))
        pid = int(context.node_config["partition-id"])
        num = int(context.node_config["num-partitions"])
        config = msg.content[CONFIG_KEY] if CONFIG_KEY in msg.content else ConfigRecord()
        strategy = str(config.get("strategy", settings.strategy))
        rnd = int(config.get("server-round", 1))
        part = settings_partition(settings, pid, num)
        if strategy == "fedavg":
            content = _fedavg_step(msg, settings, part, pid, rnd)
        else:
            content = _feddm_step(msg, settings, part, pid, rnd, context)
        kind = _malicious_kind(settings.malicious, pid)
        if kind:
            content = tamper(content, kind, settings)
        return Message(content=content, reply_to=msg)
    except Exception as exc:  # reply with the error; the server records it
        log.exception("client failed")
        reason = f"partition {pid}: {type(exc).__name__}: {exc}"
        return Message(
            Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg
        )


def _feddm_step(
    msg: Message, s: RunSettings, part, pid: int, rnd: int, context: Context
) -> RecordDict:
    model = None
    if ARRAYS_KEY in msg.content:
        model = record_to_model(msg.content[ARRAYS_KEY], s, part.info)
    ledger = _load_ledger(context)
    if ledger is None and rnd > 1 and _keeps_ledger(s.method):
        raise PrivacyBudgetExceeded(
            f"round {rnd}: no privacy ledger from this client's earlier rounds in the node's "
            "state; refusing to distill (a fresh ledger would reset the budget)"
        )
    t0 = time.perf_counter()
    syn = client_distill(
        part,
        s.method,
        s.ipc,
        s.method_overrides(),
        seed=client_seed(s.seed, pid, rnd),
        device=s.device,
        model=model,
        rounds=s.rounds,
        ledger=ledger,
    )
    new_ledger = ledger_of(syn.privacy)
    if new_ledger is not None:
        context.state[LEDGER_KEY] = ConfigRecord({"json": json.dumps(new_ledger.state())})
    metrics = set_metrics(syn, len(part), time.perf_counter() - t0)
    log.info("partition %d: %d images distilled into %d", pid, len(part), len(syn))
    return RecordDict(
        {
            SYNTHETIC_KEY: set_to_record(syn),
            METRICS_KEY: _metric_record(metrics, pid),
            PROVENANCE_KEY: ConfigRecord({"json": json.dumps(syn.meta, sort_keys=True)}),
        }
    )


LEDGER_KEY = "privacy-ledger"


def _keeps_ledger(method: str) -> bool:
    return "ledger" in inspect.signature(get_method(method).fn).parameters


def _load_ledger(context: Context) -> PrivacyLedger | None:
    """This client's ledger from its earlier rounds (None before its first private round)."""
    if LEDGER_KEY not in context.state:
        return None
    return PrivacyLedger.from_state(json.loads(str(context.state[LEDGER_KEY]["json"])))


def _fedavg_step(msg: Message, s: RunSettings, part, pid: int, rnd: int) -> RecordDict:
    model = record_to_model(msg.content[ARRAYS_KEY], s, part.info)
    t0 = time.perf_counter()
    local_train(
        model,
        part,
        epochs=s.local_epochs,
        lr=s.fedavg_lr,
        batch_size=s.batch_size,
        seed=client_seed(s.seed, pid, rnd),
        device=s.device,
    )
    record = model_to_record(model)
    metrics = {"num_examples": len(part), "seconds": time.perf_counter() - t0}
    metrics["bytes"] = record.count_bytes()
    return RecordDict({ARRAYS_KEY: record, METRICS_KEY: _metric_record(metrics, pid)})


def _metric_record(metrics: dict, pid: int) -> MetricRecord:
    out: dict[str, int | float] = {"partition-id": pid}
    for key, value in metrics.items():
        out[key.replace("_", "-")] = value
    return MetricRecord(out)


# --------------------------------------------------------------------------- test hook

MALICIOUS_KINDS = (
    "nan",
    "shape",
    "dtype",
    "labels",
    "perclass",
    "oversize",
    "missing",
    "scale",
    "raise",
)


def _malicious_kind(spec: str, pid: int) -> str | None:
    for item in filter(None, (t.strip() for t in spec.split(","))):
        who, _, kind = item.partition(":")
        if who.strip() == str(pid):
            if kind not in MALICIOUS_KINDS:
                raise ValueError(f"unknown malicious kind '{kind}'")
            return kind
    return None


def tamper(content: RecordDict, kind: str, s: RunSettings) -> RecordDict:
    """Turn an honest reply into a malformed one (test hook for the server's validation)."""
    if kind == "raise":
        raise RuntimeError("malicious client raised on purpose")
    key = SYNTHETIC_KEY if SYNTHETIC_KEY in content else ARRAYS_KEY
    record = content[key]
    arrays = {k: v.numpy() for k, v in record.items()}
    xk = "x" if key == SYNTHETIC_KEY else next(iter(arrays))
    x = arrays[xk]
    if kind == "nan":
        x = x.copy()
        x.reshape(-1)[0] = np.nan
        arrays[xk] = x
    elif kind == "shape":
        arrays[xk] = np.ascontiguousarray(x[..., :-1]) if x.ndim else x
    elif kind == "dtype":
        arrays[xk] = x.astype(np.float64)
    elif kind == "scale":  # finite, well-formed, and absurd: only the plausible range refuses it
        arrays[xk] = (x * np.float32(1e30)).astype(x.dtype)
    elif kind == "labels" and key == SYNTHETIC_KEY:
        arrays["y"] = arrays["y"] + 1000
    elif kind == "perclass" and key == SYNTHETIC_KEY:
        arrays["x"] = np.concatenate([x, x])
        arrays["y"] = np.concatenate([arrays["y"], arrays["y"]])
    elif kind == "oversize":
        reps = int(s.max_bytes // max(1, x.nbytes)) + 2
        arrays[xk] = np.concatenate([x] * reps)
        if key == SYNTHETIC_KEY:
            arrays["y"] = np.concatenate([arrays["y"]] * reps)
    elif kind == "missing":
        arrays.pop("y" if key == SYNTHETIC_KEY else xk)
    content[key] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return content
