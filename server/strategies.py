"""The server's strategies: FedDM (one-shot and multi-round, optionally robust) and FedAvg.

Both are Flower ``Strategy`` subclasses run by Flower's own ``start`` loop, each a thin layer
over the library: ``FedDMStrategy`` hands the decoded sets to the library's FedDM engine
(:class:`fedistill.engine.FedDMServer`, the round the in-process simulation runs);
``CheckedFedAvg`` validates each update and aggregates with the library's rules
(:func:`fedistill.robust.robust_aggregate`, as the in-process FedAvg does).
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
from flwr.serverapp.strategy import FedAvg, Strategy
from torch import nn

from fedistill.data import DatasetInfo, LabeledImages
from fedistill.engine import FedDMServer, FederationConfig
from fedistill.errors import ConfigError
from fedistill.evaluate import accuracy
from fedistill.federated import fedavg_weights
from fedistill.robust import robust_aggregate
from fedistill.synthetic import SyntheticSet
from fedistill.wire import AGGREGATORS, ARRAYS_KEY, CONFIG_KEY, METRICS_KEY, RunSettings, new_model
from server.records import model_to_record, record_to_model, record_to_state, state_to_record
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


class FedDMStrategy(Strategy):
    """FedDM as a Flower strategy around the library's engine.

    ``configure_train`` asks every connected node for a synthetic set (with the global model
    after round 1); ``aggregate_train`` decodes the replies — what never became a set is dropped
    here with the message's reason — and hands the sets to
    :class:`fedistill.engine.FedDMServer` (check, filter, sanitise, pool, train, evaluate): the
    same round the in-process simulation runs. It returns the new global model's arrays, so
    Flower's ``Strategy.start`` loop sends them in the next round. FedDM has no client-side
    evaluation (``configure_evaluate`` sends nothing).

    With ``robust`` the sets pass :func:`fedistill.robust.filter_sets`; with ``sanitise`` too,
    the kept sets then lose the images the other clients' models outvote
    (:func:`fedistill.robust.sanitise_sets`; the counts go to the round's ``sanitised``).
    """

    def __init__(
        self,
        s: RunSettings,
        test: LabeledImages,
        section: Section,
        *,
        robust: bool = False,
        sanitise: bool = False,
    ) -> None:
        info: DatasetInfo = test.info
        self.settings, self.section, self.info = s, section, info
        self.server = FedDMServer(
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
        self.pool: SyntheticSet | None = None
        self.sets: dict[int, SyntheticSet] = {}
        self._messages: list[Message] = []
        self._pending: dict[str, Any] = {}

    def summary(self) -> None:
        s = self.settings
        log.info(
            "FedDM (%s): %d round(s), method %s, IPC %d, global model %s for %d epochs",
            s.strategy,
            s.rounds,
            s.method,
            s.ipc,
            s.eval.model,
            s.eval.epochs,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        s = self.settings
        nodes = wait_for_nodes(grid, s.min_nodes, s.node_wait)
        log.info(
            "[FedDM round %d/%d] asking %d nodes for synthetic sets",
            server_round,
            s.rounds,
            len(nodes),
        )
        content = RecordDict(
            {CONFIG_KEY: ConfigRecord({"strategy": s.strategy, "server-round": server_round})}
        )
        if len(arrays):  # the global model, from round 2 on
            content[ARRAYS_KEY] = arrays
        self._messages = [
            Message(
                content, dst_node_id=n, message_type=MessageType.TRAIN, group_id=str(server_round)
            )
            for n in nodes
        ]
        self._pending = {"down": content_bytes(content) * len(nodes), "t0": time.perf_counter()}
        return self._messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        s, info = self.settings, self.info
        nodes = [m.metadata.dst_node_id for m in self._messages]
        got = replies_by_node(self._messages, replies)
        log.info(
            "[FedDM round %d] %d/%d replies in %.1f s",
            server_round,
            len(got),
            len(nodes),
            time.perf_counter() - self._pending["t0"],
        )
        # the transport: what never became a set is dropped here, with the message's reason
        sets: dict[int, SyntheticSet] = {}
        clients: dict[int, dict[str, Any]] = {}
        dropped: list[dict[str, Any]] = []
        up = 0
        for node in nodes:
            msg = got.get(node)
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

        record = self.server.aggregate(server_round, sets)  # the library's round
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
            self.pool = SyntheticSet.concat([self.server.sets[k] for k in record.kept])
            self.section.set(accuracies=record.accuracies)
            if len(record.accuracies) > 1:
                extra["accuracies"] = record.accuracies
        self.section.add_round(
            server_round,
            accuracy=record.accuracy,
            bytes_up=up,
            bytes_down=self._pending["down"],
            clients=clients,
            dropped=dropped,
            kept=record.kept,
            server_seconds=record.server_seconds,
            extra=extra,
        )
        self.sets = {k: self.server.sets[k] for k in record.kept}
        metrics = MetricRecord({"kept": len(record.kept), "dropped": len(dropped)})
        if record.accuracy is not None:
            metrics["accuracy"] = float(record.accuracy)
        model = self.server.model
        return (model_to_record(model) if model is not None else None), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []  # the server evaluates the global model itself (in aggregate_train)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return None


def run_feddm(
    grid: Grid,
    s: RunSettings,
    test: LabeledImages,
    section: Section,
    *,
    robust: bool = False,
    sanitise: bool = False,
) -> FedDMOutcome:
    """FedDM's rounds: :class:`FedDMStrategy` under Flower's own ``Strategy.start`` loop
    (round 1 starts from no model: an empty ArrayRecord)."""
    strategy = FedDMStrategy(s, test, section, robust=robust, sanitise=sanitise)
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(),
        num_rounds=s.rounds,
        timeout=s.reply_timeout,
    )
    return FedDMOutcome(strategy.server.model, strategy.pool, strategy.sets)


def _round_filter(info: DatasetInfo, s: RunSettings):
    """The robust filter for the engine: round ``r`` scores with seed ``seed + r - 1``."""
    from fedistill.robust import filter_sets

    return lambda sets, rnd: filter_sets(sets, info, seed=s.seed + rnd - 1, device=s.device)


def _round_sanitiser(info: DatasetInfo, s: RunSettings):
    """The per-image sanitiser for the engine, seeded like the filter."""
    from fedistill.robust import sanitise_sets

    return lambda sets, rnd: sanitise_sets(sets, info, seed=s.seed + rnd - 1, device=s.device)


# --------------------------------------------------------------------------- FedAvg


def aggregate_updates(
    records: list[ArrayRecord],
    weights: list[float],
    aggregator: str = "fedavg",
    *,
    beta: float = 0.2,
    num_malicious: int = 0,
) -> ArrayRecord:
    """Validated updates aggregated by the library's rules
    (:func:`fedistill.robust.robust_aggregate`: FedAvg's weighted mean, FedMedian,
    FedTrimmedAvg, MultiKrum) — the same code the in-process federation runs; a test checks
    each rule against Flower's own."""
    states = [record_to_state(r) for r in records]
    state, _used = robust_aggregate(
        states, weights, aggregator, beta=beta, num_malicious=num_malicious
    )
    return state_to_record(state)


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
        arrays = metrics = None
        if accepted:
            arrays = aggregate_updates(
                [v.arrays for v in accepted],
                weights,
                self.aggregator,
                beta=self.trim_beta,
                num_malicious=self.num_malicious,
            )
            # Flower's metric aggregation over one clean record per client
            contents = [
                RecordDict({METRICS_KEY: MetricRecord({self.weighted_by_key: float(w)})})
                for w in weights
            ]
            metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        self._pending.update(
            clients=clients, dropped=dropped, up=up, server_seconds=time.perf_counter() - t0
        )
        log.info(
            "[FedAvg round %d] %d updates averaged, %d dropped",
            server_round,
            len(accepted),
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
