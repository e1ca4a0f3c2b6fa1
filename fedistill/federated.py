"""FedDM and FedAvg as plain functions: the logic the Flower apps run, without Flower.

FedDM (Xiong et al., "FedDM: Iterative Distribution Matching for Communication-Efficient
Federated Learning", CVPR 2023), Algorithm 1, as implemented here:

    for round t = 1..T:
        server sends the global model w_t to every client        (none in round 1)
        client k distills its data D_k into a synthetic set S_k   (against w_t when the method
                                                                   takes a model)
        client k uploads S_k                                       (never D_k)
        server checks each S_k, keeps the acceptable ones
        server trains w_{t+1} from w_t on the pooled ∪ S_k
    report the test accuracy of w_{T+1}

One round is "one-shot" FedDM. :func:`simulate_feddm` runs the whole loop in one process, with
hooks where an attack study needs them (a client's data, its uploaded set, the server's filter);
:func:`simulate_fedavg` is the FedAvg baseline (McMahan et al. 2017) on the same partitions. The
Flower ServerApp and ClientApp (``server/``, ``clients/``) call :func:`client_distill`,
:func:`train_global`, :func:`check_client_set`, :func:`local_train` and :func:`client_seed`, so
both paths compute the same thing.

This module never imports Flower.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fedistill.augment import DSA, default_strategy
from fedistill.data import DatasetInfo, LabeledImages
from fedistill.distill import distill, get_method
from fedistill.errors import ConfigError, PrivacyBudgetExceeded, SyntheticSetError
from fedistill.evaluate import EvalConfig, accuracy
from fedistill.models import build_model
from fedistill.partition import partition
from fedistill.privacy import PrivacyLedger, ledger_of, released_size
from fedistill.synthetic import SyntheticSet
from fedistill.trainer import auto_chunk, train_many

log = logging.getLogger(__name__)

DataTamper = Callable[[int, LabeledImages], LabeledImages]
SetTamper = Callable[[int, SyntheticSet], SyntheticSet]
SetFilter = Callable[[dict[int, SyntheticSet]], tuple[list[int], dict[int, str]]]
UpdateTamper = Callable[[int, dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def client_seed(seed: int, client_id: int, server_round: int = 1) -> int:
    """The seed a client distills (or trains) with in a round: one rule for every path."""
    return int(seed) + 1000 * (int(server_round) - 1) + int(client_id)


def model_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers as float32/int arrays (what FedAvg sends)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


# --------------------------------------------------------------------------- client side


def client_distill(
    part: LabeledImages,
    method: str,
    ipc: int,
    config: Any | None = None,
    *,
    seed: int,
    device: str | torch.device = "cpu",
    model: nn.Module | None = None,
    progress: bool = False,
    rounds: int | None = None,
    ledger: PrivacyLedger | None = None,
) -> SyntheticSet:
    """A client's step: distill its partition with a registry method.

    ``config`` is the method's config dataclass, a dict of overrides, or None (defaults).
    ``model`` is the current global model (multi-round FedDM); it is passed to methods that
    take one and ignored, with a log line, by methods that do not. ``rounds``: the run's
    rounds, filled into a private method's ``rounds`` when the config leaves it unset, so its
    budget is planned for all of them. ``ledger``: the client's privacy ledger from its earlier
    rounds (:func:`fedistill.privacy.ledger_of` of its previous set), for methods that keep one;
    a round past the ledger's plan raises PrivacyBudgetExceeded before touching data.
    """
    m = get_method(method)
    if config is None:
        config = m.make_config()
    elif isinstance(config, dict):
        config = m.make_config(**config)
    if rounds is not None and getattr(config, "rounds", 0) is None:
        config = dataclasses.replace(config, rounds=int(rounds))
    if model is not None and "model" not in inspect.signature(m.fn).parameters:
        log.info("method '%s' takes no model; distilling without the global model", method)
        model = None
    if model is not None:
        model = copy.deepcopy(model).to(device).eval()
    return distill(
        method,
        part,
        ipc,
        config,
        seed=seed,
        device=device,
        progress=progress,
        model=model,
        ledger=ledger,
    )


# How far beyond the dataset's pixel range an uploaded image may reach, in units of that range's
# width (see :func:`plausible_range`).
RANGE_MARGIN = 10.0


def plausible_range(info: DatasetInfo, margin: float = RANGE_MARGIN) -> tuple[float, float]:
    """The interval of normalised values an honest synthetic image can plausibly hold.

    Real images are pixels in [0, 1] mapped through ``(x − mean) / std``, so every real image
    lies in ``[lo, hi] = [(0 − mean)/std, (1 − mean)/std]`` (per channel; the widest channel's
    bounds are used). Distillation optimises pixels without clamping, so honest sets drift past
    ``[lo, hi]``: measured on digits (IPC 10), DM, DC and KIP sets stay within about one width
    ``hi − lo`` of it. The bound allows ``margin`` widths on each side — ten times that drift —
    so it never refuses an honest set, while a set of finite 1e30 (or ×1000-scaled) images, which
    no method produces and which takes a pooled model to chance, is refused outright. Subtler
    scaling (×10) is the robust filter's business (:mod:`fedistill.robust`).
    """
    if margin < 0 or not math.isfinite(margin):
        raise ConfigError(f"range margin must be a finite number ≥ 0, got {margin}")
    los = [(0.0 - m) / s for m, s in zip(info.mean, info.std, strict=True)]
    his = [(1.0 - m) / s for m, s in zip(info.mean, info.std, strict=True)]
    lo, hi = min(los), max(his)
    width = hi - lo
    return lo - margin * width, hi + margin * width


def check_privacy_facts(facts: dict[str, Any] | None, *, source: str = "set") -> None:
    """ε ≥ 0, δ ∈ [0, 1), ρ ≥ 0, each a finite number (ε may be +∞: no privacy claimed).

    These facts come from the client: they are checked for validity here and must be shown as
    client-reported; nothing here can verify them. Raises SyntheticSetError naming the first bad
    one.
    """
    if facts is None:
        return
    if not isinstance(facts, dict):
        raise SyntheticSetError(
            f"{source}: privacy facts must be a mapping, got {type(facts).__name__}"
        )
    for key in ("epsilon", "delta", "rho"):
        if key not in facts or facts[key] is None:
            continue
        v = facts[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
            raise SyntheticSetError(f"{source}: privacy '{key}' must be a number, got {v!r}")
        if key == "epsilon" and not v >= 0:
            raise SyntheticSetError(f"{source}: epsilon must be ≥ 0, got {v}")
        if key == "delta" and not (0 <= v < 1):
            raise SyntheticSetError(f"{source}: delta must lie in [0, 1), got {v}")
        if key == "rho" and not (v >= 0 and math.isfinite(v)):
            raise SyntheticSetError(f"{source}: rho must be a finite number ≥ 0, got {v}")


def check_client_set(
    syn: SyntheticSet,
    info: DatasetInfo,
    *,
    max_ipc: int | None = None,
    max_bytes: int | None = None,
    range_margin: float = RANGE_MARGIN,
) -> None:
    """Server-side acceptance test of an uploaded set, beyond what SyntheticSet checks.

    The set must be of ``info``'s dataset and image shape, have ``info.num_classes`` classes,
    hold at most ``max_ipc`` images of any class (hard labels, or the argmax of soft ones) and
    at most ``max_bytes`` bytes; its images must lie inside :func:`plausible_range` (with
    ``range_margin``), and the privacy facts it claims must be valid
    (:func:`check_privacy_facts`). Every FedDM path (in-process, Flower, robust or not) calls
    this. Raises SyntheticSetError naming the first violation.
    """
    if syn.meta.get("dataset") != info.name:
        raise SyntheticSetError(f"set is of dataset '{syn.meta.get('dataset')}', not '{info.name}'")
    if tuple(syn.images.shape[1:]) != info.shape:
        raise SyntheticSetError(
            f"images are {tuple(syn.images.shape[1:])}, the dataset's are {info.shape}"
        )
    if syn.num_classes != info.num_classes:
        raise SyntheticSetError(f"set has {syn.num_classes} classes, dataset {info.num_classes}")
    if max_bytes is not None and syn.nbytes() > max_bytes:
        raise SyntheticSetError(f"{syn.nbytes()} bytes is over the {max_bytes} byte cap")
    if max_ipc is not None:
        counts = torch.bincount(syn.hard_labels(), minlength=info.num_classes)
        worst = int(counts.argmax())
        if int(counts[worst]) > max_ipc:
            raise SyntheticSetError(
                f"{int(counts[worst])} images of class {worst}, over the cap of {max_ipc} per class"
            )
    lo, hi = plausible_range(info, range_margin)
    x_min, x_max = float(syn.images.min()), float(syn.images.max())
    if x_min < lo or x_max > hi:
        raise SyntheticSetError(
            f"image values span [{x_min:.3g}, {x_max:.3g}], outside the plausible range "
            f"[{lo:.3g}, {hi:.3g}] of {info.name}'s normalised space (pixel range ± "
            f"{range_margin:g} widths)"
        )
    check_privacy_facts(syn.privacy)


def local_train(
    model: nn.Module,
    data: LabeledImages,
    *,
    epochs: int = 1,
    lr: float = 0.01,
    batch_size: int = 32,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """FedAvg's client step: a few epochs of minibatch SGD on the client's real data."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    x, y = data.images.to(device), data.labels.to(device)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen).to(device)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


# --------------------------------------------------------------------------- server side


def train_global(
    sets: list[SyntheticSet],
    info: DatasetInfo,
    cfg: EvalConfig,
    *,
    seed: int,
    device: str | torch.device = "cpu",
    init_model: nn.Module | None = None,
    progress: bool = False,
) -> nn.Module:
    """The server's step: pool the sets and train the global model on the pool.

    From ``init_model`` (a copy; multi-round FedDM) or a fresh ``cfg.model``, with the
    evaluation protocol's SGD schedule and optional DSA augmentation."""
    (model,) = train_global_models(
        sets, info, cfg, seeds=[seed], device=device, init_model=init_model, progress=progress
    )
    return model


def train_global_models(
    sets: list[SyntheticSet],
    info: DatasetInfo,
    cfg: EvalConfig,
    *,
    seeds: list[int],
    device: str | torch.device = "cpu",
    init_model: nn.Module | None = None,
    progress: bool = False,
) -> list[nn.Module]:
    """One model per seed on the pooled sets, trained at once by the multi-model trainer
    (:func:`fedistill.trainer.train_many`: single-threaded workers, ``cfg.chunk`` and
    ``cfg.precision`` honoured); model ``i`` is initialised under ``torch.manual_seed(seeds[i])``
    (or copies ``init_model``) and draws its batches from its own generator of that seed."""
    pool = SyntheticSet.concat(sets)
    models, gens = [], []
    for seed in seeds:  # built here, in order: initialisations draw from the global RNG
        torch.manual_seed(seed)
        gens.append(torch.Generator().manual_seed(seed))
        if init_model is not None:
            models.append(copy.deepcopy(init_model))
        else:
            models.append(build_model(cfg.model, info, **cfg.model_kwargs))
    augment = DSA(cfg.dsa_strategy or default_strategy(info)) if cfg.dsa else None
    return train_many(
        models,
        pool.images,
        pool.labels,
        cfg,
        gens,
        label_kind=pool.meta.get("label_kind", "hard"),
        augment=augment,
        device=device,
        workers=cfg.workers,
        progress=progress,
        chunk=auto_chunk(models[0]) if cfg.chunk is None else (cfg.chunk or None),
        precision=cfg.precision,
    )


WEIGHTINGS = ("clipped", "uniform", "reported")


def fedavg_weights(reported: list[float], weighting: str = "clipped") -> list[float]:
    """FedAvg's weights from the example counts clients *report* (the server cannot verify them).

    ``"clipped"`` (the default): each count is clipped to the median reported count. While
    malicious clients are a minority the median is an honest client's count, so an inflated
    ``num-examples`` (1e18) weighs no more than a typical honest client; honest clients below
    the median keep McMahan et al.'s example weighting, those above lose their excess.
    ``"uniform"``: every reply weighs 1 (what the server can verify: that the client replied).
    ``"reported"``: the counts as sent (McMahan et al.; unsafe, kept for comparison).
    Counts must be finite and ≥ 0 (validation has already refused others).
    """
    if weighting not in WEIGHTINGS:
        raise ConfigError(f"unknown weighting '{weighting}'; choose one of {', '.join(WEIGHTINGS)}")
    if not reported:
        return []
    if any(not (isinstance(n, int | float) and math.isfinite(n) and n >= 0) for n in reported):
        raise ConfigError(f"example counts must be finite numbers ≥ 0, got {reported}")
    if weighting == "uniform":
        return [1.0] * len(reported)
    if weighting == "reported":
        return [float(n) for n in reported]
    cap = float(np.median(np.asarray(reported, dtype=np.float64)))
    out = [min(float(n), cap) for n in reported]
    return out if sum(out) > 0 else [1.0] * len(reported)


def fedavg_aggregate(
    states: list[dict[str, torch.Tensor]], weights: list[float]
) -> dict[str, torch.Tensor]:
    """The weighted mean of state dicts (weights: examples per client, already made safe by
    :func:`fedavg_weights` where they come from the clients)."""
    if not states:
        raise ConfigError("no client updates to average")
    if len(weights) != len(states) or not float(sum(weights)) > 0:
        raise ConfigError("fedavg needs one weight per update and a positive total weight")
    total = float(sum(weights))
    out = {}
    for key in states[0]:
        acc = sum(s[key].double() * (w / total) for s, w in zip(states, weights))
        out[key] = acc.to(states[0][key].dtype)
    return out


# --------------------------------------------------------------------------- results


@dataclass
class FedResult:
    """What a federated run produced.

    ``clients`` maps a client id to its metrics in the last round it took part in
    (num_examples, seconds, bytes, epsilon/delta where the set carries privacy facts);
    ``history`` has one entry per round (accuracy, bytes up/down, kept, rejected).
    """

    strategy: str
    accuracy: float
    model: nn.Module
    sets: dict[int, SyntheticSet] = field(default_factory=dict)
    kept: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    clients: dict[int, dict[str, Any]] = field(default_factory=dict)
    partitions: list[np.ndarray] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)  # fresh models (eval-models > 1)
    bytes_up: int = 0
    bytes_down: int = 0
    server_seconds: float = 0.0
    client_seconds: float = 0.0
    wall_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no model, no sets)."""
        return {
            "strategy": self.strategy,
            "accuracy": self.accuracy,
            "accuracies": self.accuracies,
            "kept": self.kept,
            "rejected": {str(k): v for k, v in self.rejected.items()},
            "clients": {str(k): v for k, v in self.clients.items()},
            "partition_sizes": [len(p) for p in self.partitions],
            "history": self.history,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "server_seconds": self.server_seconds,
            "client_seconds": self.client_seconds,
            "wall_seconds": self.wall_seconds,
        }


def set_metrics(syn: SyntheticSet, part_size: int, seconds: float) -> dict[str, Any]:
    """A client's report on its set: size, bytes, time and privacy facts where there are any.

    ``epsilon`` is the ε the client's ledger has spent over every round so far; ``noise_secure``
    (1/0) says whether the noise came from a secure source (0: replayable, ε no guarantee). A
    private set keeps its exact size private: it reports the N it releases (its DP estimate, or
    a declared public N; :func:`fedistill.privacy.released_size`) as ``num_examples``, never
    ``part_size``.
    """
    out: dict[str, Any] = {
        "num_examples": released_size(syn.meta, part_size),
        "num_synthetic": len(syn),
        "seconds": float(seconds),
        "bytes": syn.nbytes(),
    }
    priv = syn.privacy or {}
    for key in ("epsilon", "delta", "rho"):  # ε = ∞ (no privacy) is left out, like none
        if isinstance(priv.get(key), int | float) and math.isfinite(priv[key]):
            out[key] = float(priv[key])
    if "rho" not in out and isinstance(syn.meta.get("hyperparameters", {}).get("rho"), int | float):
        out["rho"] = float(syn.meta["hyperparameters"]["rho"])
    if priv.get("noise") in ("secure", "replayable"):
        out["noise_secure"] = int(priv["noise"] == "secure")
    if isinstance(priv.get("steps"), int) and "epsilon" in priv:
        out["private_steps"] = int(priv["steps"])
    return out


def client_partitions(
    train: LabeledImages,
    num_clients: int,
    partitioner: str = "dirichlet",
    alpha: float = 0.5,
    seed: int = 0,
) -> list[np.ndarray]:
    """The clients' index sets, as the ClientApp computes them (same seed, same split)."""
    return partition(train.labels.numpy(), num_clients, partitioner, alpha=alpha, seed=seed)


def fresh_model_accuracies(
    sets: list[SyntheticSet],
    info: DatasetInfo,
    test: LabeledImages,
    cfg: EvalConfig,
    seed: int,
    device: str | torch.device,
) -> list[float]:
    """Accuracies of ``cfg.num_models - 1`` further fresh models on the pool (seeds seed+1..),
    trained at once."""
    if cfg.num_models < 2:
        return []
    seeds = [seed + m for m in range(1, cfg.num_models)]
    models = train_global_models(sets, info, cfg, seeds=seeds, device=device)
    return [accuracy(model, test, device) for model in models]


# --------------------------------------------------------------------------- simulations


def simulate_feddm(
    train: LabeledImages,
    test: LabeledImages,
    *,
    num_clients: int = 5,
    partitioner: str = "dirichlet",
    alpha: float = 0.5,
    method: str = "dm",
    ipc: int = 10,
    method_config: Any | None = None,
    eval_cfg: EvalConfig | None = None,
    rounds: int = 1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    max_ipc: int | None = None,
    max_bytes: int | None = None,
    data_tamper: DataTamper | None = None,
    set_tamper: SetTamper | None = None,
    set_filter: SetFilter | None = None,
    progress: bool = False,
) -> FedResult:
    """FedDM in one process: partition, distill per client, check, filter, pool, train, test.

    Hooks for attack studies: ``data_tamper(client_id, part) -> part`` changes a client's real
    data before it distills (label flipping, backdoor triggers); ``set_tamper(client_id, syn)
    -> syn`` changes the set a client uploads; ``set_filter(sets) -> (kept_ids,
    {rejected_id: reason})`` is a server-side defence. A set failing :func:`check_client_set`
    (caps default to ``ipc`` per class) is rejected with its reason before the filter runs.

    Privacy: a private method's budget is planned for all ``rounds`` (its config's ``rounds``,
    when unset), and each client keeps one ledger for the run, handed back every round; each
    round's history records every client's composed ε so far (``epsilon``). A client whose next
    round would exceed its budget sends nothing that round: it is rejected with the reason.
    """
    from fedistill.engine import FedDMServer, FederationConfig

    t_start = time.perf_counter()
    info = train.info
    server = FedDMServer(
        info,
        test,
        FederationConfig(
            eval=eval_cfg or EvalConfig(num_models=1),
            rounds=rounds,
            max_ipc=ipc if max_ipc is None else max_ipc,
            max_bytes=max_bytes,
            seed=seed,
            device=device,
        ),
        set_filter=None if set_filter is None else (lambda sets, _rnd: set_filter(sets)),
        progress=progress,
    )
    parts_idx = client_partitions(train, num_clients, partitioner, alpha, seed)
    parts = {cid: train.subset(idx) for cid, idx in enumerate(parts_idx)}
    if data_tamper is not None:
        parts = {cid: data_tamper(cid, part) for cid, part in parts.items()}

    result = FedResult("feddm", float("nan"), None, partitions=parts_idx)  # type: ignore[arg-type]
    ledgers: dict[int, PrivacyLedger | None] = {}  # one per client for the whole run
    for rnd in range(1, rounds + 1):
        down = model_bytes(server.model) * num_clients if server.model is not None else 0
        sets: dict[int, SyntheticSet] = {}
        refused: dict[int, str] = {}
        up = 0
        spent: dict[str, float] = {}
        for cid, part in parts.items():
            t0 = time.perf_counter()
            try:
                syn = client_distill(
                    part,
                    method,
                    ipc,
                    method_config,
                    seed=client_seed(seed, cid, rnd),
                    device=device,
                    model=server.model,
                    progress=progress,
                    rounds=rounds,
                    ledger=ledgers.get(cid),
                )
            except PrivacyBudgetExceeded as exc:
                log.warning("client %d, round %d: %s", cid, rnd, exc)
                refused[cid] = f"client refused: {exc}"
                result.clients[cid] = {**result.clients.get(cid, {}), "error": str(exc)}
                continue
            ledgers[cid] = ledger_of(syn.privacy)
            if ledgers[cid] is not None:
                spent[str(cid)] = ledgers[cid].epsilon_spent()
            seconds = time.perf_counter() - t0
            result.client_seconds += seconds
            if set_tamper is not None:
                syn = set_tamper(cid, syn)
            result.clients[cid] = set_metrics(syn, len(part), seconds)
            up += result.clients[cid]["bytes"]
            sets[cid] = syn
        record = server.aggregate(rnd, sets)  # the server's round: the Flower app's too
        rejected = refused | record.dropped
        if record.accuracy is None:
            raise ConfigError(f"round {rnd}: every client's set was rejected: {rejected}")
        result.server_seconds += record.server_seconds
        result.bytes_up += up
        result.bytes_down += down
        result.history.append(
            {
                "round": rnd,
                "accuracy": record.accuracy,
                "bytes_up": up,
                "bytes_down": down,
                "cum_bytes_up": result.bytes_up,
                "kept": record.kept,
                "rejected": {str(k): v for k, v in sorted(rejected.items())},
                **({"epsilon": spent} if spent else {}),
                "wall_seconds": time.perf_counter() - t_start,  # when this accuracy was known
            }
        )
        result.sets = server.checked
        result.kept, result.rejected = record.kept, rejected
        result.accuracies = record.accuracies

    result.model = server.model
    result.accuracy = result.history[-1]["accuracy"]
    result.wall_seconds = time.perf_counter() - t_start
    return result


def simulate_fedavg(
    train: LabeledImages,
    test: LabeledImages,
    *,
    num_clients: int = 5,
    partitioner: str = "dirichlet",
    alpha: float = 0.5,
    rounds: int = 10,
    local_epochs: int = 3,
    lr: float = 0.05,
    batch_size: int = 32,
    model: str = "convnet",
    model_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    data_tamper: DataTamper | None = None,
    update_tamper: UpdateTamper | None = None,
    count_tamper: Callable[[int, int], float] | None = None,
    aggregator: str = "fedavg",
    weighting: str = "clipped",
    trim_beta: float = 0.2,
    num_malicious: int = 0,
    progress: bool = False,
) -> FedResult:
    """The FedAvg baseline in one process, on the same partitions as :func:`simulate_feddm`.

    Each round every client trains the global model ``local_epochs`` epochs on its real data
    (``data_tamper`` may poison it first; ``update_tamper(client_id, state) -> state`` may
    change what a client sends back; ``count_tamper(client_id, n) -> reported`` what it reports
    as its example count, ``num_examples`` in the results, client-reported). The server weighs
    the reported counts by :func:`fedavg_weights` (``weighting``) and aggregates with
    ``aggregator``: ``fedavg`` (weighted mean), or Flower's robust rules re-implemented in
    :func:`fedistill.robust.robust_aggregate` — ``median``, ``trimmed-mean`` (``trim_beta``),
    ``multikrum`` (``num_malicious`` assumed; keeps ``n − num_malicious`` updates).
    """
    from fedistill.robust import AGGREGATORS, robust_aggregate

    if aggregator not in AGGREGATORS:
        raise ConfigError(
            f"unknown aggregator '{aggregator}'; choose one of {', '.join(AGGREGATORS)}"
        )
    if weighting not in WEIGHTINGS:
        raise ConfigError(f"unknown weighting '{weighting}'; choose one of {', '.join(WEIGHTINGS)}")
    t_start = time.perf_counter()
    if rounds < 1:
        raise ConfigError(f"rounds must be ≥ 1, got {rounds}")
    info = train.info
    parts_idx = client_partitions(train, num_clients, partitioner, alpha, seed)
    parts = {cid: train.subset(idx) for cid, idx in enumerate(parts_idx)}
    if data_tamper is not None:
        parts = {cid: data_tamper(cid, part) for cid, part in parts.items()}
    torch.manual_seed(seed)
    global_model = build_model(model, info, **(model_kwargs or {})).to(device)
    size = model_bytes(global_model)
    result = FedResult("fedavg", float("nan"), global_model, partitions=parts_idx)
    from fedistill.progress import progress_bar

    with progress_bar("fedavg", rounds, progress) as bar:
        for rnd in range(1, rounds + 1):
            states, weights = [], []
            for cid, part in parts.items():
                t0 = time.perf_counter()
                local = local_train(
                    copy.deepcopy(global_model),
                    part,
                    epochs=local_epochs,
                    lr=lr,
                    batch_size=batch_size,
                    seed=client_seed(seed, cid, rnd),
                    device=device,
                )
                seconds = time.perf_counter() - t0
                result.client_seconds += seconds
                state = {k: v.detach().cpu() for k, v in local.state_dict().items()}
                if update_tamper is not None:
                    state = update_tamper(cid, state)
                states.append(state)
                reported = len(part) if count_tamper is None else count_tamper(cid, len(part))
                weights.append(reported)
                prev = result.clients.get(cid, {})
                result.clients[cid] = {
                    "num_examples": reported,
                    "client_reported": ["num_examples"],
                    "seconds": prev.get("seconds", 0.0) + seconds,
                    "bytes": prev.get("bytes", 0) + size,
                }
            t0 = time.perf_counter()
            new_state, used = robust_aggregate(
                states,
                fedavg_weights(weights, weighting),
                aggregator,
                beta=trim_beta,
                num_malicious=num_malicious,
            )
            global_model.load_state_dict(new_state)
            result.server_seconds += time.perf_counter() - t0
            acc = accuracy(global_model, test, device)
            up = down = size * len(parts)
            result.bytes_up += up
            result.bytes_down += down
            result.history.append(
                {
                    "round": rnd,
                    "accuracy": acc,
                    "bytes_up": up,
                    "bytes_down": down,
                    "cum_bytes_up": result.bytes_up,
                    "aggregated": [list(parts)[i] for i in used],
                    "wall_seconds": time.perf_counter() - t_start,
                }
            )
            bar.advance(acc=acc)
            log.info("fedavg round %d/%d: accuracy %.4f", rnd, rounds, acc)
    result.kept = sorted(parts)
    result.accuracy = result.history[-1]["accuracy"]
    result.accuracies = [result.accuracy]
    result.wall_seconds = time.perf_counter() - t_start
    return result
