"""The evaluation protocol of the distillation literature.

A fresh network (default ConvNet-128-3, instance norm) is trained on the synthetic set with SGD
(lr 0.01, momentum 0.9, weight decay 5e-4, lr ÷10 at half the epochs, batch 256), optionally with
DSA augmentation, and tested on the real test split; repeated over several seeds, reported as
mean ± std. Hard labels train with cross-entropy, soft labels with soft-target cross-entropy,
KIP regression targets with mean squared error.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedistill.augment import DSA, default_strategy
from fedistill.data import DatasetInfo, LabeledImages, dataset_info
from fedistill.errors import ConfigError
from fedistill.models import build_model
from fedistill.progress import progress_bar
from fedistill.synthetic import SyntheticSet

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    model: str = "convnet"
    epochs: int = 300
    num_models: int = 3
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    dsa: bool = True
    dsa_strategy: str | None = None  # None: the dataset's default (no flips for digits)
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.epochs < 1 or self.num_models < 1 or self.batch_size < 1:
            raise ConfigError("epochs, num_models and batch_size must be ≥ 1")


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


def loss_for(labels: Tensor, label_kind: str):
    """The training loss matching the label kind."""
    if not labels.is_floating_point():
        return F.cross_entropy
    if label_kind == "targets":
        return lambda logits, y: F.mse_loss(logits, y)
    return lambda logits, y: F.cross_entropy(logits, y)  # probability targets


def train_classifier(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    cfg: EvalConfig,
    *,
    label_kind: str = "hard",
    augment: DSA | None = None,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> nn.Module:
    """Train ``model`` on (images, labels) with the protocol's SGD schedule."""
    device = torch.device(device)
    model.to(device).train()
    x, y = images.to(device), labels.to(device)
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [cfg.epochs // 2], 0.1)
    criterion = loss_for(labels, label_kind)
    n = len(x)
    with progress_bar("train", cfg.epochs, progress) as bar:
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=generator).to(device)
            for start in range(0, n, cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                xb = x[idx]
                if augment is not None:
                    xb = augment(xb, generator=generator)
                loss = criterion(model(xb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()
            bar.advance(loss=loss.item())
    return model.eval()


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
    accs = []
    for m in range(cfg.num_models):
        torch.manual_seed(seed * 1000 + m)
        gen = torch.Generator().manual_seed(seed * 1000 + m)
        model = build_model(cfg.model, info, **cfg.model_kwargs)
        train_classifier(
            model,
            images,
            labels,
            cfg,
            label_kind=label_kind,
            augment=augment,
            device=device,
            generator=gen,
            progress=progress,
        )
        accs.append(accuracy(model, test, device))
        log.info("model %d/%d: test accuracy %.4f", m + 1, cfg.num_models, accs[-1])
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
    """The protocol on a synthetic set; its dataset must match the test split's."""
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
