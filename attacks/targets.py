"""Target pipelines: from a training subset of real data to the model an attacker queries.

A membership attack on distillation must attack the *whole* pipeline (Carlini, Feldman & Nasr,
"No Free Lunch in 'Privacy for Free'", 2022): the private data are distilled, a model is trained
on the synthetic set, and the attacker sees that model. A :class:`PipelineConfig` names one such
pipeline:

* ``method="real"`` — the reference: train the network directly on the real subset;
* any registry method (``random``, ``dm``, ``dc``, ``dsa``, ``kip``, ``psg``, …) — distill the
  subset with ``fedistill.distill.distill(method, subset, ipc, seed=…, **method_options)``
  (e.g. ``{"init": "noise"}`` vs ``{"init": "real"}`` for DM/DC), then train a fresh network on
  the synthetic set with the evaluation protocol's trainer.

:func:`build_target` runs a pipeline on the members drawn from a candidate pool and records
which candidates were members and the training budget, so attack results can state both. It
also records the **exposed** members: the candidates the method provably copied into its set
(``random``'s picks, the real initialisation of DM / DC / DSA / KIP), from the method's own
record (``distill(..., record=...)``), which never travels with the set. Membership results
report both populations, all members and exposed ones, side by side.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fedistill.augment import DSA, default_strategy
from fedistill.config import TrainProtocol
from fedistill.data import LabeledImages
from fedistill.distill import distill, get_method
from fedistill.errors import ConfigError
from fedistill.evaluate import EvalConfig, train_classifier
from fedistill.factorised import decode
from fedistill.models import build_model
from fedistill.synthetic import SyntheticSet

log = logging.getLogger(__name__)

REAL = "real"


@dataclass
class PipelineConfig(TrainProtocol):
    """One target pipeline: how the private subset becomes a model.

    ``method``/``ipc``/``method_options`` describe the distillation (ignored for ``real``); the
    training protocol's fields (:class:`fedistill.config.TrainProtocol`) train the final model
    (``dsa``: train-time DSA augmentation, as in the distillation literature's evaluation).
    """

    method: str = REAL
    ipc: int = 10
    method_options: dict[str, Any] = field(default_factory=dict)
    name: str | None = None  # label for tables and plots (default: built from the fields)

    def validate(self) -> None:
        try:
            self.validate_protocol()
        except ConfigError as exc:
            raise ConfigError(f"pipeline {exc}") from None
        if self.method != REAL:
            if not isinstance(self.ipc, int) or self.ipc < 1:
                raise ConfigError(f"ipc must be a positive integer, got {self.ipc!r}")
            get_method(self.method).make_config(**self.method_options)  # unknown keys fail here
        elif self.method_options:
            raise ConfigError("the 'real' pipeline takes no method options")

    def eval_config(self) -> EvalConfig:
        return EvalConfig(**dataclasses.asdict(self.protocol()), num_models=1)

    @property
    def label(self) -> str:
        """A short name for tables and plot legends, e.g. ``dm-ipc10-init=noise``."""
        if self.name:
            return self.name
        if self.method == REAL:
            return REAL
        opts = "".join(f"-{k}={v}" for k, v in sorted(self.method_options.items()))
        return f"{self.method}-ipc{self.ipc}{opts}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"label": self.label}


@dataclass
class TargetModel:
    """A trained pipeline and the facts an attack report needs about it."""

    model: nn.Module
    config: PipelineConfig
    seed: int
    members: np.ndarray  # indices into the candidate pool that the pipeline trained on
    nonmembers: np.ndarray  # the other candidates
    budget: dict[str, Any]
    synthetic: SyntheticSet | None = None
    exposed: np.ndarray | None = None  # pool indices the method copied into its set (or None)

    @property
    def privacy(self) -> dict[str, Any] | None:
        return None if self.synthetic is None else self.synthetic.privacy

    @property
    def member_mask(self) -> np.ndarray:
        mask = np.zeros(len(self.members) + len(self.nonmembers), bool)
        mask[self.members] = True
        return mask

    @property
    def exposed_mask(self) -> np.ndarray:
        """Over the pool: True for the exposed members (all False when none were recorded)."""
        mask = np.zeros(len(self.members) + len(self.nonmembers), bool)
        if self.exposed is not None:
            mask[self.exposed] = True
        return mask


def train_pipeline(
    cfg: PipelineConfig,
    data: LabeledImages,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
    record: dict[str, Any] | None = None,
) -> tuple[nn.Module, SyntheticSet | None, dict[str, Any]]:
    """Run the pipeline on ``data``: (model, synthetic set or None, training budget).

    ``record`` (optional out-parameter) receives the method's ``"exposed"`` indices into
    ``data`` (see :func:`fedistill.distill.distill`); for ``real``, every example is exposed.
    """
    cfg.validate()
    syn = None
    if cfg.method == REAL:
        images, labels, label_kind = data.images, data.labels, "hard"
        iterations = 0
        if record is not None:
            record["exposed"] = np.arange(len(data))
    else:
        syn = distill(
            cfg.method,
            data,
            cfg.ipc,
            seed=seed,
            device=device,
            progress=progress,
            record=record,
            **cfg.method_options,
        )
        plain = decode(syn)  # a factorised set (IDC, HaBa) trains on what it decodes to
        images, labels = plain.images, plain.labels
        label_kind = syn.meta.get("label_kind", "hard")
        iterations = int(syn.meta.get("iterations", 0))
    ecfg = cfg.eval_config()
    augment = DSA(cfg.dsa_strategy or default_strategy(data.info)) if cfg.dsa else None
    train_seed = 7919 * seed + 1  # not the distillation seed: fresh init for the final model
    torch.manual_seed(train_seed)
    gen = torch.Generator().manual_seed(train_seed)
    model = build_model(cfg.model, data.info, **cfg.model_kwargs)
    train_classifier(
        model,
        images,
        labels,
        ecfg,
        label_kind=label_kind,
        augment=augment,
        device=device,
        generator=gen,
    )
    n = len(images)
    budget = {
        "method": cfg.method,
        "ipc": None if cfg.method == REAL else cfg.ipc,
        "source_examples": len(data),
        "distill_iterations": iterations,
        "train_examples": n,
        "train_epochs": ecfg.epochs,
        "train_steps": ecfg.epochs * math.ceil(n / ecfg.batch_size),
        "model": cfg.model,
    }
    if syn is not None and syn.privacy:
        budget["privacy"] = syn.privacy
    return model, syn, budget


def build_target(
    cfg: PipelineConfig,
    pool: LabeledImages,
    members: np.ndarray,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> TargetModel:
    """Train the pipeline on ``pool[members]`` and record the member/non-member split."""
    members = np.sort(np.asarray(members, dtype=np.int64))
    if len(members) == 0 or len(np.unique(members)) != len(members):
        raise ConfigError("members must be distinct, non-empty pool indices")
    nonmembers = np.setdiff1d(np.arange(len(pool)), members)
    record: dict[str, Any] = {}
    model, syn, budget = train_pipeline(
        cfg, pool.subset(members), seed=seed, device=device, progress=progress, record=record
    )
    local = record.get("exposed")
    exposed = None if local is None else np.sort(members[np.asarray(local, dtype=np.int64)])
    log.info(
        "target %s seed %d: %d members (%s exposed), %d non-members",
        cfg.label,
        seed,
        len(members),
        "?" if exposed is None else len(exposed),
        len(nonmembers),
    )
    return TargetModel(model, cfg, seed, members, nonmembers, budget, syn, exposed)


def random_half(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random half (⌊n/2⌋) of ``range(n)``, sorted."""
    return np.sort(rng.permutation(n)[: n // 2])


def attacked_utility(
    target: TargetModel,
    test: LabeledImages,
    *,
    full_data: LabeledImages | None = None,
    full_accuracy: float | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """The utility of the pipeline the attack targeted, beside the full-data figure.

    A privacy table must show what the attacked sets are worth: the target model (trained on
    the set distilled from the target's own members) on ``test``. Beside it the same pipeline
    on ``full_data`` (trained here), or a ``full_accuracy`` measured elsewhere — the figure a
    utility table usually quotes. Returns ``{"attacked": {"accuracy", "source_examples",
    "train_examples"}, "full_data": {"accuracy", "source_examples"} | None, "gap"}``.
    """
    from fedistill.evaluate import accuracy

    if target.model is None:
        raise ConfigError("the target's model was not kept; cannot measure its utility")
    out: dict[str, Any] = {
        "attacked": {
            "accuracy": accuracy(target.model, test, device),
            "source_examples": target.budget["source_examples"],
            "train_examples": target.budget["train_examples"],
        },
        "full_data": None,
        "gap": None,
    }
    if full_data is not None and full_accuracy is None:
        model, _, budget = train_pipeline(target.config, full_data, seed=seed, device=device)
        out["full_data"] = {
            "accuracy": accuracy(model, test, device),
            "source_examples": budget["source_examples"],
        }
    elif full_accuracy is not None:
        out["full_data"] = {"accuracy": float(full_accuracy), "source_examples": None}
    if out["full_data"] is not None:
        out["gap"] = out["full_data"]["accuracy"] - out["attacked"]["accuracy"]
    log.info(
        "%s: attacked pipeline %.3f%s",
        target.config.label,
        out["attacked"]["accuracy"],
        "" if out["full_data"] is None else f" (full data {out['full_data']['accuracy']:.3f})",
    )
    return out
