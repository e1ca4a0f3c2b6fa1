"""The server's strategies: FedDM (one-shot and multi-round, optionally robust) and FedAvg.

FedDM is a loop of its own (its replies are synthetic sets, not model updates, so Flower's
FedAvg, which wants exactly one ArrayRecord to average, does not apply). FedAvg is Flower's
own ``FedAvg`` with its ``start`` loop; the subclass here only checks each reply before
Flower averages it and records per-client metrics and bytes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from torch import nn

from fedistill.data import DatasetInfo, LabeledImages
from fedistill.engine import FedDMServer, FederationConfig
from fedistill.errors import ConfigError
from fedistill.evaluate import accuracy
from fedistill.federated import fedavg_weights
from fedistill.synthetic import SyntheticSet
from fedistill.wire import AGGREGATORS, ARRAYS_KEY, CONFIG_KEY, METRICS_KEY, RunSettings, new_model
from server.records import model_to_record, record_to_model
from server.results import Section
from server.validate import ReplyError, decode_synthetic_reply, validate_update_reply

log = logging.getLogger("flwr.fedistill.server")


def wait_for_nodes(grid: Grid, min_nodes: int, wait: float) -> list[int]:
    """The connected nodes, once at least ``min_nodes`` are (or ``wait`` seconds passed)."""
    deadline = time.monotonic() + wait
    while True:
        ids = sorted(grid.get_node_ids())
        if len(ids) >= max(1, min_nodes) or time.monotonic() > deadline:
            break
        log.info("waiting for nodes: %d connected, %d wanted", len(ids), min_nodes)
        time.sleep(1.0)
    if not ids:
        raise ConfigError(f"no SuperNode connected within {wait:.0f} s")
    return ids


def content_bytes(content: RecordDict) -> int:
    """Bytes of the arrays a message carries (as serialised; no decoding)."""
    return sum(rec.count_bytes() for rec in content.array_records.values())


def _partition_of(msg: Message) -> int | None:
    try:
        rec = msg.content.metric_records.get(METRICS_KEY)
        value = rec.get("partition-id") if rec is not None else None
        return int(value) if isinstance(value, int | float) else None
    except Exception:
        return None


def replies_by_node(sent: Iterable[Message], replies: Iterable[Message]) -> dict[int, Message]:
    """Replies keyed by the node each answers for. A node's own reply names it as the source; an
    error the SuperLink writes for a node that went away (node unavailable) comes from the
    SuperLink itself, so it is matched through the message it replies to."""
    sent = list(sent)
    dsts = {m.metadata.dst_node_id for m in sent}
    to_node = {m.metadata.message_id: m.metadata.dst_node_id for m in sent if m.metadata.message_id}
    out: dict[int, Message] = {}
    for r in replies:
        node = r.metadata.src_node_id
        if node not in dsts:  # not from a node we asked: the SuperLink answering for one
            node = to_node.get(r.metadata.reply_to_message_id, node)
        out[node] = r
    return out


def _drop(node: int, reason: str, msg: Message | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"node_id": node, "reason": reason}
    if msg is not None and msg.has_error():
        out["error_code"] = int(msg.error.code)
    elif msg is not None:
        pid = _partition_of(msg)
        if pid is not None:
            out["partition_id"] = pid
    log.warning("dropped the reply of node %s: %s", node, reason)
    return out


# --------------------------------------------------------------------------- FedDM


@dataclass
class FedDMOutcome:
    model: nn.Module | None
    pool: SyntheticSet | None
    sets: dict[int, SyntheticSet] = field(default_factory=dict)


def unreachable(dropped: list[dict[str, Any]]) -> set[int]:
    """Nodes that never answered (timeout, or the SuperLink reports them unavailable)."""
    lost = {
        ErrorCode.MESSAGE_UNAVAILABLE,
        ErrorCode.REPLY_MESSAGE_UNAVAILABLE,
        ErrorCode.NODE_UNAVAILABLE,
    }
    return {
        int(d["node_id"])
        for d in dropped
        if d["reason"].startswith("no reply") or d.get("error_code") in lost
    }


def run_feddm(
    grid: Grid,
    s: RunSettings,
    test: LabeledImages,
    section: Section,
    *,
    robust: bool = False,
    sanitise: bool = False,
) -> FedDMOutcome:
    """FedDM rounds over Flower: send (config, global model), decode the replies, and hand the
    sets to the library's engine (:class:`fedistill.engine.FedDMServer`: check, filter,
    sanitise, pool, train, evaluate) — the same round the in-process simulation runs.

    With ``robust`` the sets pass :func:`fedistill.robust.filter_sets`; with ``sanitise`` too,
    the kept sets then lose the images the other clients' models outvote
    (:func:`fedistill.robust.sanitise_sets`; the counts go to the round's ``sanitised``)."""
    info: DatasetInfo = test.info
    server = FedDMServer(
        info,
        test,
        FederationConfig(
            eval=s.eval_config(),
            rounds=s.rounds,
            max_ipc=s.ipc_cap,
            max_bytes=s.max_bytes,
            seed=s.seed,
            device=s.device,
        ),
        set_filter=_round_filter(info, s) if robust else None,
        sanitiser=_round_sanitiser(info, s) if robust and sanitise else None,
    )
    outcome = FedDMOutcome(None, None)
    for rnd in range(1, s.rounds + 1):
        nodes = wait_for_nodes(grid, s.min_nodes, s.node_wait)
        log.info(
            "[FedDM round %d/%d] asking %d nodes for synthetic sets", rnd, s.rounds, len(nodes)
        )
        content = RecordDict(
            {CONFIG_KEY: ConfigRecord({"strategy": s.strategy, "server-round": rnd})}
        )
        if server.model is not None:
            content[ARRAYS_KEY] = model_to_record(server.model)
        down = content_bytes(content) * len(nodes)
        messages = [
            Message(content, dst_node_id=n, message_type=MessageType.TRAIN, group_id=str(rnd))
            for n in nodes
        ]
        t_send = time.perf_counter()
        replies = replies_by_node(
            messages, grid.send_and_receive(messages, timeout=s.reply_timeout)
        )
        log.info(
            "[FedDM round %d] %d/%d replies in %.1f s",
            rnd,
            len(replies),
            len(nodes),
            time.perf_counter() - t_send,
        )

        # the transport: what never became a set is dropped here, with the message's reason
        sets: dict[int, SyntheticSet] = {}
        clients: dict[int, dict[str, Any]] = {}
        dropped: list[dict[str, Any]] = []
        up = 0
        for node in nodes:
            msg = replies.get(node)
            if msg is None:
                dropped.append(_drop(node, f"no reply within {s.reply_timeout:g} s"))
                continue
            if msg.has_error():
                dropped.append(_drop(node, f"client error: {msg.error.reason}", msg))
                continue
            up += content_bytes(msg.content)
            try:
                valid = decode_synthetic_reply(
                    msg.content, info, max_ipc=s.ipc_cap, max_bytes=s.max_bytes
                )
            except ReplyError as exc:
                dropped.append(_drop(node, f"invalid reply: {exc}", msg))
                continue
            sets[node] = valid.syn
            clients[node] = dict(
                valid.metrics, bytes=valid.payload_bytes, client_reported=valid.client_reported
            )

        record = server.aggregate(rnd, sets)  # the library's round, as in-process
        for node, reason in record.dropped.items():
            row = _drop(node, reason)
            if "partition_id" in clients.get(node, {}):
                row["partition_id"] = clients[node]["partition_id"]
            if reason.startswith("invalid set: "):
                clients.pop(node, None)  # refused: not a participant of the round
            dropped.append(row)
        extra: dict[str, Any] = {}
        if record.sanitised is not None:
            extra["sanitised"] = {str(k): v for k, v in record.sanitised.items()}
        if record.accuracy is not None:
            outcome.pool = SyntheticSet.concat([server.sets[k] for k in record.kept])
            section.set(accuracies=record.accuracies)
            if len(record.accuracies) > 1:
                extra["accuracies"] = record.accuracies
        section.add_round(
            rnd,
            accuracy=record.accuracy,
            bytes_up=up,
            bytes_down=down,
            clients=clients,
            dropped=dropped,
            kept=record.kept,
            server_seconds=record.server_seconds,
            extra=extra,
        )
        outcome.sets = {k: server.sets[k] for k in record.kept}
    outcome.model = server.model
    return outcome


def _round_filter(info: DatasetInfo, s: RunSettings):
    """The robust filter for the engine: round ``r`` scores with seed ``seed + r - 1``."""
    from fedistill.robust import filter_sets

    return lambda sets, rnd: filter_sets(sets, info, seed=s.seed + rnd - 1, device=s.device)


def _round_sanitiser(info: DatasetInfo, s: RunSettings):
    """The per-image sanitiser for the engine, seeded like the filter."""
    from fedistill.robust import sanitise_sets

    return lambda sets, rnd: sanitise_sets(sets, info, seed=s.seed + rnd - 1, device=s.device)


# --------------------------------------------------------------------------- FedAvg


def aggregate_contents(
    contents: list[RecordDict],
    key: str,
    weighted_by: str,
    aggregator: str = "fedavg",
    *,
    beta: float = 0.2,
    num_malicious: int = 0,
    num_selected: int | None = None,
) -> tuple[ArrayRecord, list[int]]:
    """Validated replies aggregated with Flower's own rules: ``fedavg``
    (``aggregate_arrayrecords``, weighted by ``weighted_by``), ``median`` (FedMedian's
    coordinate-wise ``np.median``), ``trimmed-mean`` (FedTrimmedAvg's ``trim_mean``, ``beta``),
    ``multikrum`` (MultiKrum's ``select_multikrum``, then the weighted mean of the selection).
    Returns the arrays and the indices of the replies used. The library's Flower-free twin is
    :func:`fedistill.robust.robust_aggregate`."""
    import numpy as np
    from flwr.app import Array
    from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
    from flwr.serverapp.strategy.multikrum import select_multikrum

    if aggregator not in AGGREGATORS:
        raise ConfigError(
            f"unknown aggregator '{aggregator}'; choose one of {', '.join(AGGREGATORS)}"
        )
    everyone = list(range(len(contents)))
    if aggregator == "fedavg":
        return aggregate_arrayrecords(contents, weighted_by), everyone
    if aggregator == "multikrum":
        k = num_selected if num_selected is not None else max(1, len(contents) - num_malicious)
        chosen = select_multikrum(
            contents, num_malicious_nodes=num_malicious, num_nodes_to_select=k
        )
        ids = [next(i for i, c in enumerate(contents) if c is x) for x in chosen]
        return aggregate_arrayrecords(chosen, weighted_by), ids
    names = list(contents[0][key].keys())
    out = ArrayRecord()
    for name in names:
        layers = np.stack([c[key][name].numpy() for c in contents])
        value = np.median(layers, axis=0) if aggregator == "median" else trim_mean(layers, beta)
        out[name] = Array(np.asarray(value).astype(layers.dtype))
    return out, everyone


class CheckedFedAvg(FedAvg):
    """Flower's FedAvg; every reply is validated first (bad ones are dropped with a reason)
    and per-client metrics and bytes go to the results.

    Weighting: the reported ``num-examples`` are client-reported and cannot be verified, so
    they are clipped to the median reported count (:func:`fedistill.federated.fedavg_weights`,
    ``weighting``) before Flower averages: one client claiming 1e9 examples weighs no more than
    a typical honest client. ``aggregator`` swaps the mean for Flower's FedMedian,
    FedTrimmedAvg or MultiKrum rule (:func:`aggregate_contents`).
    """

    def __init__(
        self,
        section: Section,
        s: RunSettings,
        nodes: list[int] | None = None,
        *,
        aggregator: str = "fedavg",
        weighting: str = "clipped",
        trim_beta: float = 0.2,
        num_malicious: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(fraction_evaluate=0.0, **kwargs)
        if aggregator not in AGGREGATORS:
            raise ConfigError(
                f"unknown aggregator '{aggregator}'; choose one of {', '.join(AGGREGATORS)}"
            )
        self.section, self.settings = section, s
        self.aggregator, self.weighting = aggregator, weighting
        self.trim_beta, self.num_malicious = trim_beta, num_malicious
        self.nodes = set(nodes) if nodes is not None else None
        self._messages: list[Message] = []  # the grid stamps their message ids when it pushes
        self._reference: ArrayRecord | None = None
        self._pending: dict[str, Any] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if self.nodes is not None:  # e.g. the baseline skips nodes that went silent before
            messages = [m for m in messages if m.metadata.dst_node_id in self.nodes]
        self._messages = messages
        self._reference = arrays
        self._pending = {"down": arrays.count_bytes() * len(messages), "t0": time.perf_counter()}
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        t0 = time.perf_counter()
        replies = list(replies)
        got = replies_by_node(self._messages, replies)
        clients: dict[int, dict[str, Any]] = {}
        dropped: list[dict[str, Any]] = []
        contents: list[RecordDict] = []
        accepted: list[Any] = []
        up = 0
        for node in (m.metadata.dst_node_id for m in self._messages):
            msg = got.get(node)
            if msg is None:
                dropped.append(_drop(node, "no reply within the timeout"))
                continue
            if msg.has_error():
                dropped.append(_drop(node, f"client error: {msg.error.reason}", msg))
                continue
            up += content_bytes(msg.content)
            try:
                valid = validate_update_reply(
                    msg.content,
                    self._reference,
                    arrays_key=self.arrayrecord_key,
                    max_bytes=self.settings.max_bytes,
                )
            except ReplyError as exc:
                dropped.append(_drop(node, f"invalid reply: {exc}", msg))
                continue
            clients[node] = dict(
                valid.metrics, bytes=valid.payload_bytes, client_reported=valid.client_reported
            )
            accepted.append(valid)
        weights = fedavg_weights([v.metrics["num_examples"] for v in accepted], self.weighting)
        for valid, weight in zip(accepted, weights, strict=True):
            # a clean record with the same keys for every client (Flower checks consistency)
            contents.append(
                RecordDict(
                    {
                        self.arrayrecord_key: valid.arrays,
                        METRICS_KEY: MetricRecord({self.weighted_by_key: float(weight)}),
                    }
                )
            )
        arrays = metrics = None
        if contents:
            arrays, _used = aggregate_contents(
                contents,
                self.arrayrecord_key,
                self.weighted_by_key,
                self.aggregator,
                beta=self.trim_beta,
                num_malicious=self.num_malicious,
            )
            metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        self._pending.update(
            clients=clients, dropped=dropped, up=up, server_seconds=time.perf_counter() - t0
        )
        log.info(
            "[FedAvg round %d] %d updates averaged, %d dropped",
            server_round,
            len(contents),
            len(dropped),
        )
        return arrays, metrics

    def evaluate_fn(self, test: LabeledImages):
        """Centralised evaluation after each round; records the round in the results."""

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            if server_round == 0:
                return None
            t0 = time.perf_counter()
            model = record_to_model(arrays, self.settings, test.info)
            acc = accuracy(model, test, self.settings.device)
            p = self._pending
            self.section.add_round(
                server_round,
                accuracy=acc,
                bytes_up=p.get("up", 0),
                bytes_down=p.get("down", 0),
                clients=p.get("clients", {}),
                dropped=p.get("dropped", []),
                server_seconds=p.get("server_seconds", 0.0) + time.perf_counter() - t0,
            )
            self.section.set(accuracies=[acc])
            log.info("[FedAvg round %d] test accuracy %.4f", server_round, acc)
            return MetricRecord({"accuracy": acc})

        return evaluate


def run_fedavg(
    grid: Grid,
    s: RunSettings,
    test: LabeledImages,
    section: Section,
    *,
    exclude: set[int] | frozenset[int] = frozenset(),
    aggregator: str = "fedavg",
    num_malicious: int = 0,
) -> nn.Module:
    """FedAvg rounds with Flower's FedAvg on the connected nodes (less ``exclude``, e.g. nodes
    that never replied to the main strategy); a fresh model to start."""
    import torch

    nodes = [n for n in wait_for_nodes(grid, s.min_nodes, s.node_wait) if n not in exclude]
    if not nodes:
        raise ConfigError("no node left to run FedAvg on")
    if exclude:
        log.info(
            "FedAvg skips %d node(s) that did not reply before: %s", len(exclude), sorted(exclude)
        )
    torch.manual_seed(s.seed)
    model = new_model(s, test.info)
    strategy = CheckedFedAvg(
        section,
        s,
        nodes=nodes,
        aggregator=aggregator,
        num_malicious=num_malicious,
        min_train_nodes=len(nodes),
        min_available_nodes=len(nodes),
        arrayrecord_key=ARRAYS_KEY,
        configrecord_key=CONFIG_KEY,
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=model_to_record(model),
        num_rounds=s.fedavg_rounds,
        timeout=s.reply_timeout,
        train_config=ConfigRecord({"strategy": "fedavg"}),
        evaluate_fn=strategy.evaluate_fn(test),
    )
    final = result.arrays if result.arrays is not None and len(result.arrays) else None
    return record_to_model(final, s, test.info) if final is not None else model
