"""The FedDM server, once: what happens to the sets that reached the server in a round.

Both paths of a federation call this engine — the in-process simulation that the attacks and
benchmarks drive (:func:`fedistill.federated.simulate_feddm`) and the Flower ServerApp
(``server/strategies.py``) — so a check, a defence or a fix added here holds in both, and an
attack measured in-process is the attack the real app suffers. The transport (Flower messages,
or function calls) stays outside: each path turns what it received into
``{client: SyntheticSet}`` and drops, with its own reason, what never became a set (no reply, a
client error, an undecodable payload).

One round of :meth:`FedDMServer.aggregate` (FedDM, Xiong et al. CVPR 2023, Algorithm 1, the
server's lines)::

    for each uploaded S_k:  check S_k (dataset, shape, classes, caps, plausible range,
                            privacy facts; a factorised S_k: its decoded images finite and
                            in range too)                         -> dropped "invalid set: …"
                            S_k ← decode(S_k)  (fedistill.factorised; a plain set is itself)
    robust:                 filter the sets (fedistill.robust)    -> dropped "filtered: …"
    sanitise:               drop outvoted images from kept sets   -> counts in ``sanitised``
    if any set is left:     w_{t+1} = train(w_t, ∪ S_k)           (the evaluation protocol)
                            accuracy of w_{t+1} on the test split
    one-shot, several models: the accuracies of fresh models on the same pool

This module never imports Flower.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from fedistill.data import DatasetInfo, LabeledImages
from fedistill.errors import ConfigError, SyntheticSetError
from fedistill.evaluate import EvalConfig, accuracy
from fedistill.factorised import check_decoded, decode
from fedistill.federated import (
    check_client_set,
    fresh_model_accuracies,
    plausible_range,
    train_global,
)
from fedistill.synthetic import SyntheticSet

log = logging.getLogger(__name__)

# (sets, round) -> (kept client ids, {rejected id: reason})
RoundFilter = Callable[[dict[int, SyntheticSet], int], tuple[list[int], dict[int, str]]]
# (sets, round) -> (cleaned sets, {client: images dropped})
RoundSanitiser = Callable[
    [dict[int, SyntheticSet], int], tuple[dict[int, SyntheticSet], dict[int, int]]
]


@dataclass
class FederationConfig:
    """What the FedDM server needs to know: the training protocol of the global model, the
    run's rounds, the caps on an upload, the seed (round ``r`` trains with ``seed + r - 1``)."""

    eval: EvalConfig = field(default_factory=lambda: EvalConfig(num_models=1))
    rounds: int = 1
    max_ipc: int | None = None
    max_bytes: int | None = None
    seed: int = 0
    device: str | torch.device = "cpu"

    def validate(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"rounds must be ≥ 1, got {self.rounds}")
        self.eval.validate()


@dataclass
class RoundRecord:
    """What the server did with one round's sets."""

    round: int
    kept: list[int]
    dropped: dict[int, str]  # client -> reason, for every set the server refused
    accuracy: float | None  # None: nothing left to train on (the model is unchanged)
    accuracies: list[float] = field(default_factory=list)  # + fresh models (one-shot)
    sanitised: dict[int, int] | None = None  # images dropped per kept client
    server_seconds: float = 0.0  # training and evaluating the global (and any fresh) models


class FedDMServer:
    """The FedDM server of one run: call :meth:`aggregate` once per round with the sets that
    arrived; :attr:`model` is the global model after the last round that trained, :attr:`sets`
    the sets it trained on, :attr:`checked` every set of the last round that passed the check
    (the filter's rejects included)."""

    def __init__(
        self,
        info: DatasetInfo,
        test: LabeledImages,
        config: FederationConfig,
        *,
        set_filter: RoundFilter | None = None,
        sanitiser: RoundSanitiser | None = None,
        progress: bool = False,
    ) -> None:
        config.validate()
        if sanitiser is not None and set_filter is None:
            raise ConfigError("sanitising sets needs the robust filter's vote (set_filter)")
        self.info, self.test, self.config = info, test, config
        self.set_filter, self.sanitiser, self.progress = set_filter, sanitiser, progress
        self.model: nn.Module | None = None
        self.sets: dict[int, SyntheticSet] = {}
        self.checked: dict[int, SyntheticSet] = {}

    def check(self, sets: Mapping[int, SyntheticSet]) -> tuple[dict[int, SyntheticSet], dict]:
        """The sets that pass :func:`~fedistill.federated.check_client_set`, and the reasons
        of the others."""
        c = self.config
        ok: dict[int, SyntheticSet] = {}
        dropped: dict[int, str] = {}
        for cid in sorted(sets):
            try:
                check_client_set(sets[cid], self.info, max_ipc=c.max_ipc, max_bytes=c.max_bytes)
                check_decoded(sets[cid], *plausible_range(self.info))  # factorised: decoded too
            except SyntheticSetError as exc:
                dropped[cid] = f"invalid set: {exc}"
                continue
            ok[cid] = sets[cid]
        return ok, dropped

    def aggregate(self, rnd: int, sets: Mapping[int, SyntheticSet]) -> RoundRecord:
        """One round: check, filter, sanitise, pool, train, evaluate (see the module)."""
        c = self.config
        ok, dropped = self.check(sets)
        self.checked = dict(ok)  # as uploaded (a factorised set: what travelled)
        ok = {k: decode(s) for k, s in ok.items()}  # filtered, sanitised and pooled decoded
        kept = sorted(ok)
        sanitised = None
        if self.set_filter is not None and ok:
            kept, rejected = self.set_filter(dict(ok), rnd)
            kept = sorted(int(k) for k in kept)
            dropped.update({int(k): f"filtered: {v}" for k, v in sorted(rejected.items())})
            if self.sanitiser is not None and kept:
                cleaned, sanitised = self.sanitiser({k: ok[k] for k in kept}, rnd)
                ok.update(cleaned)
                for k in kept:
                    if k not in cleaned:
                        dropped[k] = "sanitised: every image was outvoted"
                kept = sorted(cleaned)
        record = RoundRecord(rnd, kept, dropped, None, sanitised=sanitised)
        if not kept:
            log.warning("FedDM round %d: no usable set, the global model is unchanged", rnd)
            return record
        pool = [ok[k] for k in kept]
        t0 = time.perf_counter()
        self.model = train_global(
            pool,
            self.info,
            c.eval,
            seed=c.seed + rnd - 1,
            device=c.device,
            init_model=self.model,
            progress=self.progress,
        )
        record.accuracy = accuracy(self.model, self.test, c.device)
        record.accuracies = [record.accuracy]
        if c.rounds == 1 and c.eval.num_models > 1:  # one-shot: fresh models on the same pool
            record.accuracies += fresh_model_accuracies(
                pool, self.info, self.test, c.eval, c.seed, c.device
            )
        record.server_seconds = time.perf_counter() - t0
        self.sets = {k: ok[k] for k in kept}
        log.info(
            "FedDM round %d/%d: %d sets kept, %d dropped, accuracy %.4f",
            rnd,
            c.rounds,
            len(kept),
            len(dropped),
            record.accuracy,
        )
        return record
