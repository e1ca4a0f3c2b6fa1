"""How well a membership attack separates members from non-members.

Every attack in this package produces one score per candidate (higher = "more likely a member").
This module turns scores and ground truth into the numbers the membership-inference literature
reports (Carlini et al., "Membership Inference Attacks From First Principles", S&P 2022):

* the ROC curve of a threshold sweep ("member" when ``score >= t``), its **AUC**;
* **balanced accuracy** at the best threshold, ``max_t (TPR + 1 − FPR) / 2``;
* **TPR at a fixed low FPR** (1%, 0.1%) — the figure that matters for privacy;
* the **log-log ROC plot** of the LiRA paper, one curve per attack, with the diagonal.

TPR at a fixed FPR is read off the empirical ROC *conservatively*: the largest TPR among the
thresholds whose FPR does not exceed the target, never interpolated upwards. With ``n_out``
non-members the smallest non-zero FPR is ``1 / n_out`` (the *resolution*); a target below it
can only be met at FPR = 0, and the result says so (``resolved[target] = False``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

LOW_FPRS: tuple[float, ...] = (0.01, 0.001)


@dataclass(frozen=True)
class RocCurve:
    """Empirical ROC of the rule "member iff score ≥ threshold".

    ``fpr``/``tpr`` start at (0, 0) (threshold +inf) and end at (1, 1); ``thresholds[i]`` is the
    score threshold of point ``i``.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    n_in: int
    n_out: int


def _as_arrays(scores: Sequence[float] | np.ndarray, is_member: Sequence[bool] | np.ndarray):
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(is_member, dtype=bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.shape}) and is_member ({y.shape}) differ in length")
    if not np.all(np.isfinite(s)):
        raise ValueError("attack scores must be finite")
    if y.all() or not y.any():
        raise ValueError("need at least one member and one non-member to measure an attack")
    return s, y


def roc_curve(
    scores: Sequence[float] | np.ndarray, is_member: Sequence[bool] | np.ndarray
) -> RocCurve:
    """The ROC of a threshold sweep over every distinct score (ties move together)."""
    s, y = _as_arrays(scores, is_member)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    # last index of each run of equal scores: one ROC point per distinct threshold
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    n_in, n_out = int(y.sum()), int((~y).sum())
    fpr = np.r_[0.0, fp / n_out]
    tpr = np.r_[0.0, tp / n_in]
    thresholds = np.r_[np.inf, s[last]]
    return RocCurve(fpr, tpr, thresholds, n_in, n_out)


def auc(roc: RocCurve) -> float:
    """Area under the ROC (trapezoids; ties count one half, as the Mann–Whitney U)."""
    return float(np.trapezoid(roc.tpr, roc.fpr))


def balanced_accuracy(roc: RocCurve) -> float:
    """Best balanced accuracy over thresholds: ``max (TPR + 1 − FPR) / 2``."""
    return float(np.max((roc.tpr + 1.0 - roc.fpr) / 2.0))


def tpr_at_fpr(roc: RocCurve, target: float) -> float:
    """Largest TPR over thresholds with FPR ≤ ``target`` (a step reading, never interpolated)."""
    ok = roc.fpr <= target + 1e-12
    return float(np.max(roc.tpr[ok]))


def fpr_resolution(n_out: int) -> float:
    """The smallest non-zero FPR measurable with ``n_out`` non-members."""
    return 1.0 / n_out


@dataclass
class AttackMetrics:
    """The numbers of one attack on one set of candidates."""

    auc: float
    balanced_accuracy: float
    tpr_at_fpr: dict[float, float]
    resolved: dict[float, bool]  # False: the target FPR is below 1/n_out (only FPR 0 is met)
    n_in: int
    n_out: int
    roc: RocCurve = field(repr=False)

    @property
    def fpr_resolution(self) -> float:
        return fpr_resolution(self.n_out)

    def to_dict(self, roc_points: int = 200) -> dict[str, Any]:
        """JSON-ready: metrics, keys like ``tpr@0.1%fpr``, and a thinned ROC for plots."""
        out: dict[str, Any] = {
            "auc": self.auc,
            "balanced_accuracy": self.balanced_accuracy,
            "n_in": self.n_in,
            "n_out": self.n_out,
            "fpr_resolution": self.fpr_resolution,
        }
        for t, v in self.tpr_at_fpr.items():
            out[f"tpr@{_pct(t)}fpr"] = v
            out[f"tpr@{_pct(t)}fpr_resolved"] = self.resolved[t]
        fpr, tpr = thin_roc(self.roc, roc_points)
        out["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
        return out


def _pct(x: float) -> str:
    return f"{x * 100:g}%"


def summarize(
    scores: Sequence[float] | np.ndarray,
    is_member: Sequence[bool] | np.ndarray,
    fprs: Sequence[float] = LOW_FPRS,
) -> AttackMetrics:
    """AUC, balanced accuracy and TPR at each FPR in ``fprs`` for one attack."""
    roc = roc_curve(scores, is_member)
    res = fpr_resolution(roc.n_out)
    return AttackMetrics(
        auc=auc(roc),
        balanced_accuracy=balanced_accuracy(roc),
        tpr_at_fpr={f: tpr_at_fpr(roc, f) for f in fprs},
        resolved={f: f >= res for f in fprs},
        n_in=roc.n_in,
        n_out=roc.n_out,
        roc=roc,
    )


def thin_roc(roc: RocCurve, points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """At most about ``points`` ROC points, log-spaced in FPR so the low-FPR end survives.

    Keeps, for each FPR kept, the highest TPR there (the upper envelope of the step curve).
    """
    fpr, tpr = roc.fpr, roc.tpr
    if len(fpr) <= points:
        return fpr.copy(), tpr.copy()
    lo = fpr_resolution(roc.n_out)
    grid = np.unique(np.r_[0.0, np.geomspace(lo, 1.0, points - 1)])
    keep_tpr = np.array([np.max(tpr[fpr <= g + 1e-12]) for g in grid])
    return grid, keep_tpr


def plot_roc(
    curves: Mapping[str, AttackMetrics | RocCurve],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """The LiRA paper's log-log ROC: one curve per attack/target, with the chance diagonal.

    The axes start at half the finest FPR resolution among the curves (points at FPR 0 or TPR 0
    cannot be drawn on log axes and are placed on that floor).
    """
    from fedistill.plots import _plt

    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    floors = []
    fig, ax = plt.subplots(figsize=(4.4, 3.6))
    rocs = {k: (v.roc if isinstance(v, AttackMetrics) else v) for k, v in curves.items()}
    for roc in rocs.values():
        floors.append(min(fpr_resolution(roc.n_out), 1.0 / roc.n_in))
    floor = 0.5 * min(floors) if floors else 1e-3
    floor = min(floor, 1e-3)
    for name, roc in rocs.items():
        a = auc(roc)
        low = tpr_at_fpr(roc, 0.001)
        ax.plot(
            np.maximum(roc.fpr, floor),
            np.maximum(roc.tpr, floor),
            label=f"{name} (AUC {a:.3f}, TPR@0.1% {low:.3f})",
            drawstyle="steps-post",
            lw=1.2,
        )
    ax.plot([floor, 1], [floor, 1], ls="--", color="gray", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor, 1)
    ax.set_ylim(floor, 1)
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def binomial_std_auc(n_in: int, n_out: int) -> float:
    """Standard deviation of the AUC of a chance-level attack (Mann–Whitney null), for context."""
    return math.sqrt((n_in + n_out + 1) / (12.0 * n_in * n_out))
