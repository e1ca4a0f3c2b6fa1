"""Threshold membership inference (Yeom et al., "Privacy Risk in Machine Learning", CSF 2018).

The simplest attack: a model fits its training examples better than unseen ones, so an example
whose loss is low is guessed to be a member. Sweeping the threshold over every score gives the
attack's ROC (see :mod:`attacks.metrics`). Two scores:

* ``loss``: ``−CE(f(x), y)`` — Yeom et al.'s loss attack;
* ``confidence``: the probability ``f(x)_y`` of the true class.

Also here: the *logit-scaled confidence* ``φ = log(p_y / (1 − p_y))`` that LiRA fits Gaussians
to (computed stably from the logits as ``z_y − logsumexp_{j≠y} z_j``), and the query
augmentations (small shifts, flips where the dataset allows them) used to score a model on
several views of each example.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attacks.metrics import AttackMetrics, summarize
from fedistill.data import DatasetInfo, LabeledImages
from fedistill.evaluate import predict

SCORES = ("loss", "confidence")


def logit_confidence(logits: Tensor, labels: Tensor) -> Tensor:
    """``φ = log(p_y) − log(1 − p_y)`` from logits, without forming probabilities."""
    logits = logits.double()
    true = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, labels.view(-1, 1), float("-inf"))
    return true - torch.logsumexp(others, dim=1)


def example_scores(logits: Tensor, labels: Tensor, kind: str) -> Tensor:
    """Per-example membership score (float64) from logits; higher: "more likely a member"."""
    if kind == "loss":
        return -F.cross_entropy(logits.double(), labels, reduction="none")
    if kind == "confidence":
        return F.softmax(logits.double(), dim=1).gather(1, labels.view(-1, 1)).squeeze(1)
    if kind == "logit":
        return logit_confidence(logits, labels)
    raise ValueError(f"unknown score '{kind}'; choose loss, confidence or logit")


def query_views(images: Tensor, info: DatasetInfo, shift: int = 1, flip: bool | None = None):
    """The views a model is queried on: the image itself, then shifts by ``shift`` pixels in
    the four directions (reflect padding), and their horizontal mirrors when the dataset's flips
    preserve labels (``flip=None``: ``info.flip``; never for digits)."""
    flip = info.flip if flip is None else flip
    views = [images]
    if shift > 0:
        p = shift
        padded = F.pad(images, (p, p, p, p), mode="reflect")
        h, w = images.shape[-2:]
        for dy, dx in ((-p, 0), (p, 0), (0, -p), (0, p)):
            views.append(padded[..., p + dy : p + dy + h, p + dx : p + dx + w])
    if flip:
        views += [v.flip(-1) for v in list(views)]
    return views


@torch.no_grad()
def model_scores(
    model: nn.Module,
    data: LabeledImages,
    kind: str = "logit",
    *,
    shift: int = 0,
    flip: bool | None = False,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Scores of ``model`` on every example of ``data``, one column per query view (N×Q)."""
    cols = []
    for view in query_views(data.images, data.info, shift, flip):
        logits = predict(model, view, device)
        cols.append(example_scores(logits, data.labels, kind).numpy())
    return np.stack(cols, axis=1).astype(np.float64)


@dataclass
class ThresholdAttack:
    """Result of a threshold attack: per-candidate scores, ground truth and metrics."""

    kind: str
    scores: np.ndarray
    is_member: np.ndarray
    metrics: AttackMetrics = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"attack": self.kind, **self.metrics.to_dict()}


def threshold_attack(
    model: nn.Module,
    members: LabeledImages,
    nonmembers: LabeledImages,
    kind: str = "loss",
    *,
    device: torch.device | str = "cpu",
) -> ThresholdAttack:
    """Yeom et al.'s attack on ``model``: score both pools, sweep the threshold."""
    if kind not in SCORES:
        raise ValueError(f"unknown threshold attack '{kind}'; choose one of {SCORES}")
    s_in = model_scores(model, members, kind, device=device)[:, 0]
    s_out = model_scores(model, nonmembers, kind, device=device)[:, 0]
    scores = np.r_[s_in, s_out]
    is_member = np.r_[np.ones(len(s_in), bool), np.zeros(len(s_out), bool)]
    return ThresholdAttack(kind, scores, is_member, summarize(scores, is_member))
