"""The evaluation protocol of the distillation literature.

A fresh network (default ConvNet-128-3, instance norm) is trained on the synthetic set with SGD
(lr 0.01, momentum 0.9, weight decay 5e-4, lr ÷10 at half the epochs, batch 256), optionally with
DSA augmentation, and tested on the real test split; repeated over several seeds, reported as
mean ± std. Hard labels train with cross-entropy, soft labels with soft-target cross-entropy,
KIP regression targets with mean squared error.

The models train concurrently (:func:`fedistill.trainer.map_models`: one single-threaded worker
per intra-op thread), each exactly as it would alone up to float rounding: model ``m`` of seed
``s`` is initialised under ``torch.manual_seed(1000·s + m)`` and draws its batch order and
augmentation from its own generator seeded the same way, whatever ``workers`` is. A ConvNet's
batches go through forward/backward in cache-sized chunks (``EvalConfig.chunk``; the same step up
to float rounding). ``EvalConfig.precision="bf16"`` is an opt-in, not-equal, faster path.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fedistill.augment import DSA, default_strategy
from fedistill.config import TrainProtocol
from fedistill.data import DatasetInfo, LabeledImages, dataset_info
from fedistill.errors import ConfigError
from fedistill.factorised import decode
from fedistill.models import build_model
from fedistill.synthetic import SyntheticSet
from fedistill.trainer import PRECISIONS, auto_chunk, loss_for, map_models, train_classifier

__all__ = [
    "EvalConfig",
    "EvalResult",
    "accuracy",
    "evaluate_arrays",
    "evaluate_set",
    "loss_for",
    "predict",
    "train_classifier",
]

log = logging.getLogger(__name__)


@dataclass
class EvalConfig(TrainProtocol):
    """The training protocol (:class:`fedistill.config.TrainProtocol`), repeated over
    ``num_models`` seeds, and how the models are scheduled on this machine."""

    num_models: int = 3
    # models trained at once; None: one per intra-op thread (at most num_models), 1: in turn
    workers: int | None = None
    # images per forward/backward chunk (gradients accumulated; equal up to float rounding);
    # None: fedistill.trainer.auto_chunk's pick for the model, 0: whole batches
    chunk: int | None = None
    # "bf16": forward under bfloat16 autocast (opt-in, not equal to fp32; see fedistill.trainer)
    precision: str = "fp32"

    def validate(self) -> None:
        self.validate_protocol()
        if self.num_models < 1:
            raise ConfigError("num_models must be ≥ 1")
        if self.workers is not None and self.workers < 1:
            raise ConfigError("workers must be ≥ 1 (or None for one per thread)")
        if self.chunk is not None and self.chunk < 0:
            raise ConfigError("chunk must be ≥ 0 (0: whole batches; None: automatic)")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"unknown precision '{self.precision}'; choose one of {', '.join(PRECISIONS)}"
            )


@dataclass
class EvalResult:
    accuracies: list[float]
    config: dict[str, Any]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        return statistics.pstdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy_mean": self.mean,
            "accuracy_std": self.std,
            "accuracies": self.accuracies,
            "config": self.config,
        }


@torch.no_grad()
def predict(
    model: nn.Module, images: Tensor, device: torch.device | str = "cpu", batch_size: int = 1024
) -> Tensor:
    """Logits for ``images`` (CPU tensor), in eval mode."""
    model.eval()
    out = [
        model(images[i : i + batch_size].to(device)).float().cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out) if out else torch.empty(0)


def accuracy(model: nn.Module, data: LabeledImages, device: torch.device | str = "cpu") -> float:
    return float((predict(model, data.images, device).argmax(1) == data.labels).float().mean())


def evaluate_arrays(
    images: Tensor,
    labels: Tensor,
    info: DatasetInfo,
    test: LabeledImages,
    cfg: EvalConfig | None = None,
    *,
    label_kind: str = "hard",
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> EvalResult:
    """Train ``cfg.num_models`` fresh models on (images, labels); test accuracy of each."""
    cfg = cfg or EvalConfig()
    cfg.validate()
    strategy = cfg.dsa_strategy or default_strategy(info)
    augment = DSA(strategy) if cfg.dsa else None
    models, gens = [], []
    for m in range(cfg.num_models):  # built here, in order: init draws from the global RNG
        torch.manual_seed(seed * 1000 + m)
        gens.append(torch.Generator().manual_seed(seed * 1000 + m))
        models.append(build_model(cfg.model, info, **cfg.model_kwargs))

    def train_and_test(m: int, helpers: int) -> float:
        model = train_classifier(
            models[m],
            images,
            labels,
            cfg,
            label_kind=label_kind,
            augment=augment,
            device=device,
            generator=gens[m],
            chunk=auto_chunk(models[m]) if cfg.chunk is None else (cfg.chunk or None),
            precision=cfg.precision,
            chunk_workers=helpers,
        )
        acc = accuracy(model, test, device)
        log.info("model %d/%d: test accuracy %.4f", m + 1, cfg.num_models, acc)
        return acc

    accs = map_models(
        train_and_test,
        range(cfg.num_models),
        workers=cfg.workers,
        device=device,
        progress=progress,
        description="evaluate",
        helpers=True,
    )
    conf = asdict(cfg) | {
        "dsa_strategy": strategy if cfg.dsa else None,
        "seed": seed,
        "test_size": len(test),
    }
    return EvalResult(accs, conf)


def evaluate_set(
    syn: SyntheticSet,
    test: LabeledImages,
    cfg: EvalConfig | None = None,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> EvalResult:
    """The protocol on a synthetic set; its dataset must match the test split's. A factorised
    set trains on the images it decodes to (:func:`fedistill.factorised.decode`)."""
    syn = decode(syn)
    if syn.meta["dataset"] != test.info.name:
        raise ConfigError(
            f"set was distilled from '{syn.meta['dataset']}' but the test split is "
            f"'{test.info.name}'"
        )
    if tuple(syn.images.shape[1:]) != test.info.shape:
        raise ConfigError(
            f"set images are {tuple(syn.images.shape[1:])}, dataset expects {test.info.shape}"
        )
    return evaluate_arrays(
        syn.images,
        syn.labels,
        dataset_info(syn.meta["dataset"]),
        test,
        cfg,
        label_kind=syn.meta.get("label_kind", "hard"),
        seed=seed,
        device=device,
        progress=progress,
    )
