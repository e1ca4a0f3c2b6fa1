"""Poisoning the FedAvg baseline, with Flower-equivalent robust aggregators.

``m`` of ``n`` FedAvg clients are malicious: ``label_flip`` (they train on flipped labels),
``scaled_update`` (they send their model × ``scale``) or ``inflated_count`` (label flip and a
reported example count of ``inflated``). Each attack runs against every aggregation rule of
:data:`fedistill.robust.AGGREGATORS` (the library's twins of Flower's FedAvg, FedMedian,
FedTrimmedAvg and MultiKrum), beside the same rule's clean federation, so the defended FedAvg
row compares cell by cell with FedDM behind the robust filter (:mod:`attacks.poisoning`)."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from attacks.poisoning import label_flip_tamper
from fedistill.data import LabeledImages
from fedistill.errors import ConfigError

log = logging.getLogger(__name__)

FEDAVG_ATTACKS = ("label_flip", "scaled_update", "inflated_count")


def scaled_update_tamper(malicious: list[int] | set[int], scale: float = 10.0):
    """An ``update_tamper``: the malicious clients send their model's floating-point tensors
    multiplied by ``scale`` (a boosted, out-of-range update; finite, so validation keeps it)."""
    bad = set(malicious)

    def tamper(cid: int, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if cid not in bad:
            return state
        return {k: v * scale if v.is_floating_point() else v for k, v in state.items()}

    return tamper


def run_fedavg_poisoning(
    train: LabeledImages,
    test: LabeledImages,
    *,
    attacks: tuple[str, ...] = FEDAVG_ATTACKS,
    aggregators: tuple[str, ...] = ("fedavg", "median", "trimmed-mean", "multikrum"),
    m: int = 1,
    n: int = 5,
    scale: float = 10.0,
    inflated: float = 1e9,
    weighting: str = "clipped",
    trim_beta: float = 0.2,
    seed: int = 0,
    **fedavg_kwargs: Any,
) -> dict[str, Any]:
    """The FedAvg baseline against ``m`` of ``n`` malicious clients, per aggregator (the
    library's twins of Flower's FedAvg, FedMedian, FedTrimmedAvg, MultiKrum, with the count
    ``weighting`` of :func:`fedistill.federated.fedavg_weights`).

    Attacks: ``label_flip`` (the client trains on flipped labels), ``scaled_update`` (its
    update × ``scale``), ``inflated_count`` (label flip *and* a reported ``num-examples`` of
    ``inflated``). Returns ``{"clean": {aggregator: accuracy}, "rows": [{"attack",
    "aggregator", "accuracy", "clean_accuracy", "accuracy_drop", "aggregated_last_round"}],
    ...}``; MultiKrum is told the true ``m``."""
    from fedistill.federated import simulate_fedavg

    bad = list(range(m))
    common = dict(
        num_clients=n,
        seed=seed,
        weighting=weighting,
        trim_beta=trim_beta,
        num_malicious=m,
        **fedavg_kwargs,
    )
    clean: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for agg in aggregators:
        clean[agg] = simulate_fedavg(train, test, aggregator=agg, **common).accuracy
        for attack in attacks:
            if attack not in FEDAVG_ATTACKS:
                raise ConfigError(
                    f"unknown FedAvg attack '{attack}'; choose one of {', '.join(FEDAVG_ATTACKS)}"
                )
            kw: dict[str, Any] = {}
            if attack in ("label_flip", "inflated_count"):
                kw["data_tamper"] = label_flip_tamper(bad)
            if attack == "scaled_update":
                kw["update_tamper"] = scaled_update_tamper(bad, scale)
            if attack == "inflated_count":
                kw["count_tamper"] = lambda cid, count: inflated if cid in bad else count
            res = simulate_fedavg(train, test, aggregator=agg, **common, **kw)
            rows.append(
                {
                    "attack": attack,
                    "aggregator": agg,
                    "accuracy": res.accuracy,
                    "clean_accuracy": clean[agg],
                    "accuracy_drop": clean[agg] - res.accuracy,
                    "aggregated_last_round": res.history[-1].get("aggregated"),
                }
            )
            log.info(
                "fedavg %s vs %s: accuracy %.4f (clean %.4f)", agg, attack, res.accuracy, clean[agg]
            )
    return {
        "m": m,
        "n": n,
        "scale": scale,
        "inflated": inflated,
        "weighting": weighting,
        "trim_beta": trim_beta,
        "clean": clean,
        "rows": rows,
        "seconds": time.perf_counter() - t0,
    }
