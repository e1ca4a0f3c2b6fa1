"""A server-side filter for clients' synthetic sets (opt-in defence against poisoning).

A federated server that pools synthetic sets (FedDM style) trusts every client's images and
labels. A malicious client can upload a set whose labels are flipped or permuted, images that
are noise or scaled, or a set crafted to pull the pooled model's decision. This filter scores
every set before pooling and rejects the outliers, each with a reason.

Two independent tests, both relative to the *median* client (robust while malicious clients
are a minority):

1. **Leave-one-out cross-scoring.** For each client ``i`` a small model is trained (a few
   epochs) on the pooled sets of all *other* clients and scores ``i``'s set by the fraction of
   its images classified as the label ``i`` claims. Under non-IID label skew an honest client
   holds only some classes, and the leave-one-out model is weaker on classes few others hold,
   so the score is compared with what is *expected* for the classes the client claims: for
   each class ``c`` the reference accuracy is the median, over the clients that claim ``c``, of
   their accuracy on ``c``; the client's expected accuracy is that reference averaged over its
   images. Classes that the other clients hold too few images of give no evidence and are
   skipped. A client is rejected when its deficit (expected − observed) exceeds the median
   deficit by more than ``max(min_gap, z · 1.4826 · MAD)``. Flipped labels score near 0.
2. **Feature statistics.** Per set: mean pixel, log pixel standard deviation, fraction of pixels
   outside the valid pixel range of the dataset, and roughness (mean neighbour difference over
   the standard deviation — noise is rough, digits are smooth). A set is rejected when a robust
   z-score ``(x − median) / max(1.4826 · MAD, floor)`` exceeds ``z_stats``; the floors keep
   honest non-IID spread (a set of ones is darker than a set of eights) from counting.

Labels are used as hard class ids (argmax for soft labels). With fewer than
``config.min_clients`` sets there is no majority to compare against and every set is kept.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from fedistill.data import DatasetInfo
from fedistill.errors import ConfigError
from fedistill.evaluate import EvalConfig, predict, train_classifier
from fedistill.models import build_model
from fedistill.synthetic import SyntheticSet

log = logging.getLogger(__name__)

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution × this = its standard deviation
STATS = ("mean", "log_std", "out_of_range", "roughness")


@dataclass
class FilterConfig:
    """Thresholds and the cheap scoring model of :func:`filter_sets`."""

    # leave-one-out cross-scoring
    cross_score: bool = True
    model: str = "convnet"
    model_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"width": 32, "depth": 2, "norm": "instance"}
    )
    epochs: int = 40
    lr: float = 0.01
    batch_size: int = 64
    min_gap: float = 0.3  # a deficit below this (accuracy points) is never rejected
    z_accuracy: float = 4.0
    min_class_support: int = 2  # the other clients must hold ≥ this many images of a class
    # feature statistics
    feature_stats: bool = True
    z_stats: float = 6.0
    stat_floors: dict[str, float] = field(
        default_factory=lambda: {
            "mean": 0.25,
            "log_std": 0.15,
            "out_of_range": 0.05,
            "roughness": 0.15,
        }
    )
    range_tolerance: float = 0.5  # in normalised units beyond the [0, 1] pixel range
    min_clients: int = 3

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("filter epochs and batch_size must be ≥ 1")
        if self.min_clients < 3:
            raise ConfigError("the filter needs min_clients ≥ 3 to have a majority")
        if set(self.stat_floors) != set(STATS):
            raise ConfigError(f"stat_floors must give a floor for each of {', '.join(STATS)}")


@dataclass
class ClientScore:
    """What the filter measured for one client."""

    accuracy: float | None = None  # leave-one-out accuracy on the classes it could be scored on
    expected: float | None = None  # the median clients' accuracy on the same classes
    scored_images: int = 0
    stats: dict[str, float] = field(default_factory=dict)
    z: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    @property
    def deficit(self) -> float | None:
        if self.accuracy is None or self.expected is None:
            return None
        return self.expected - self.accuracy


@dataclass
class FilterReport:
    kept: list[int]
    rejected: dict[int, str]
    scores: dict[int, ClientScore]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kept": self.kept,
            "rejected": {str(k): v for k, v in self.rejected.items()},
            "scores": {
                str(k): {
                    "accuracy": s.accuracy,
                    "expected": s.expected,
                    "deficit": s.deficit,
                    "scored_images": s.scored_images,
                    "stats": s.stats,
                    "z": s.z,
                }
                for k, s in self.scores.items()
            },
        }


def filter_sets(
    sets: dict[int, SyntheticSet],
    info: DatasetInfo,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    config: FilterConfig | None = None,
) -> tuple[list[int], dict[int, str]]:
    """Kept client ids (sorted) and ``{rejected id: reason}``. See the module docstring."""
    report = score_sets(sets, info, seed=seed, device=device, config=config)
    return report.kept, report.rejected


def score_sets(
    sets: dict[int, SyntheticSet],
    info: DatasetInfo,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    config: FilterConfig | None = None,
) -> FilterReport:
    """:func:`filter_sets` with every client's scores (for reports)."""
    cfg = config or FilterConfig()
    cfg.validate()
    ids = sorted(sets)
    scores = {i: ClientScore() for i in ids}
    for i in ids:
        if tuple(sets[i].images.shape[1:]) != info.shape:
            raise ConfigError(
                f"client {i}: images are {tuple(sets[i].images.shape[1:])}, "
                f"dataset expects {info.shape}"
            )
    if len(ids) < cfg.min_clients:
        log.warning(
            "robust filter: %d sets, fewer than %d; nothing to compare against, keeping all",
            len(ids),
            cfg.min_clients,
        )
        return FilterReport(ids, {}, scores)
    if cfg.feature_stats:
        _feature_test(sets, info, cfg, scores)
    if cfg.cross_score:
        _cross_score_test(sets, info, cfg, scores, seed=seed, device=torch.device(device))
    rejected = {i: "; ".join(s.reasons) for i, s in scores.items() if s.reasons}
    kept = [i for i in ids if i not in rejected]
    for i, why in rejected.items():
        log.info("robust filter rejects client %s: %s", i, why)
    return FilterReport(kept, rejected, scores)


def false_rejection_rate(rejected: dict[int, str] | list[int], honest: list[int]) -> float:
    """Fraction of the honest clients that the filter rejected."""
    if not honest:
        return 0.0
    return sum(1 for i in honest if i in rejected) / len(honest)


# --------------------------------------------------------------------------- robust statistics


def _median(values: list[float]) -> float:
    return float(torch.tensor(values, dtype=torch.float64).quantile(0.5))


def _robust_scale(values: list[float], floor: float) -> tuple[float, float]:
    """(median, max(1.4826 · MAD, floor)); medians average the two middle values."""
    t = torch.tensor(values, dtype=torch.float64)
    med = float(t.quantile(0.5))
    mad = float((t - med).abs().quantile(0.5))
    return med, max(MAD_TO_SIGMA * mad, floor)


# --------------------------------------------------------------------------- feature statistics


def set_statistics(images: torch.Tensor, info: DatasetInfo, tolerance: float = 0.5) -> dict:
    """Per-set image statistics in the dataset's normalised space."""
    x = images.double()
    std = float(x.std()) if x.numel() > 1 else 0.0
    mean_t = torch.tensor(info.mean, dtype=torch.float64).view(1, -1, 1, 1)
    std_t = torch.tensor(info.std, dtype=torch.float64).view(1, -1, 1, 1)
    lo, hi = (0 - mean_t) / std_t - tolerance, (1 - mean_t) / std_t + tolerance
    outside = ((x < lo) | (x > hi)).double().mean()
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean() if x.shape[-1] > 1 else x.new_zeros(())
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean() if x.shape[-2] > 1 else x.new_zeros(())
    return {
        "mean": float(x.mean()),
        "log_std": math.log(max(std, 1e-8)),
        "out_of_range": float(outside),
        "roughness": float((dx + dy) / 2 / max(std, 1e-8)),
    }


def _feature_test(sets, info, cfg: FilterConfig, scores: dict[int, ClientScore]) -> None:
    ids = sorted(sets)
    for i in ids:
        scores[i].stats = set_statistics(sets[i].images, info, cfg.range_tolerance)
    for name in STATS:
        values = [scores[i].stats[name] for i in ids]
        med, scale = _robust_scale(values, cfg.stat_floors[name])
        for i, v in zip(ids, values, strict=True):
            z = (v - med) / scale
            scores[i].z[name] = z
            if abs(z) > cfg.z_stats:
                scores[i].reasons.append(
                    f"image statistic '{name}' is an outlier: {v:.3g} vs median {med:.3g} "
                    f"(robust z {z:+.1f}, threshold ±{cfg.z_stats:g})"
                )


# --------------------------------------------------------------------------- cross-scoring


def _cross_score_test(
    sets, info, cfg: FilterConfig, scores: dict[int, ClientScore], *, seed: int, device
) -> None:
    ids = sorted(sets)
    k = info.num_classes
    labels = {i: sets[i].hard_labels() for i in ids}
    counts = {i: torch.bincount(labels[i], minlength=k) for i in ids}
    total = sum(counts.values())
    train_cfg = EvalConfig(
        model=cfg.model,
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        dsa=False,
        model_kwargs=dict(cfg.model_kwargs),
    )
    # correct[i][c] = (hits, n) of the leave-one-out model on client i's images claimed as c
    per_class: dict[int, dict[int, float]] = {}
    sizes: dict[int, dict[int, int]] = {}
    for n_i, i in enumerate(ids):
        others = [j for j in ids if j != i]
        x = torch.cat([sets[j].images for j in others])
        y = torch.cat([labels[j] for j in others])
        torch.manual_seed(seed * 7919 + n_i)
        gen = torch.Generator().manual_seed(seed * 7919 + n_i)
        model = build_model(cfg.model, info, **cfg.model_kwargs)
        train_classifier(model, x, y, train_cfg, device=device, generator=gen)
        pred = predict(model, sets[i].images, device).argmax(1)
        support = total - counts[i]  # images of each class among the other clients
        per_class[i], sizes[i] = {}, {}
        for c in range(k):
            mask = labels[i] == c
            if mask.any() and support[c] >= cfg.min_class_support:
                per_class[i][c] = float((pred[mask] == c).double().mean())
                sizes[i][c] = int(mask.sum())
    reference = {}
    for c in range(k):
        accs = [per_class[i][c] for i in ids if c in per_class[i]]
        if accs:
            reference[c] = _median(accs) if len(accs) > 1 else accs[0]
    deficits: dict[int, float] = {}
    for i in ids:
        n = sum(sizes[i].values())
        s = scores[i]
        s.scored_images = n
        if n == 0:
            continue
        s.accuracy = sum(per_class[i][c] * m for c, m in sizes[i].items()) / n
        s.expected = sum(reference[c] * m for c, m in sizes[i].items()) / n
        deficits[i] = s.expected - s.accuracy
    if len(deficits) < cfg.min_clients:
        return
    med, scale = _robust_scale(list(deficits.values()), 0.0)
    threshold = max(cfg.min_gap, cfg.z_accuracy * scale)
    for i, d in deficits.items():
        s = scores[i]
        s.z["deficit"] = (d - med) / scale if scale > 0 else (math.inf if d > med else 0.0)
        if d - med > threshold:
            s.reasons.append(
                f"leave-one-out accuracy on its labels is {s.accuracy:.2f}, the other clients "
                f"reach {s.expected:.2f} on the same classes (deficit {d - med:.2f} above "
                f"the median > threshold {threshold:.2f}): labels disagree with the images"
            )
