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

**Intervals** (:func:`intervals`, :func:`population_report`). Every AUC and TPR@FPR comes with
a 95% interval:

* AUC: stratified percentile bootstrap over the candidates (members and non-members resampled
  separately, ``B = 1000``);
* TPR@FPR: the same bootstrap (the threshold is re-chosen in every replicate, so its
  uncertainty from the non-members counts), *widened* to contain the Clopper–Pearson interval
  of the TPR at the chosen threshold (``k`` of ``n_in`` members above it). The widening keeps a
  zero count honest: 0 of ``n_in`` still has the upper bound ``1 − 0.025^(1/n_in)``.

The bootstrap treats candidates as independent trials given the attacked model(s); trials
pooled over leave-one-out shadows are not independent, so intervals are computed on
independent targets only. A TPR below the FPR resolution is printed as ``"< x"``
(:func:`format_tpr`), never as a bare number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import beta
from sklearn.metrics import roc_curve as _sk_roc_curve

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
    """The ROC of a threshold sweep over every distinct score (ties move together):
    scikit-learn's ``roc_curve`` with every point kept, starting at (0, 0) for ``+inf``."""
    s, y = _as_arrays(scores, is_member)
    fpr, tpr, thresholds = _sk_roc_curve(y, s, drop_intermediate=False)
    thresholds = np.asarray(thresholds, dtype=np.float64).copy()
    thresholds[0] = np.inf  # older scikit-learn put max(score) + 1 there
    return RocCurve(fpr, tpr, thresholds, int(y.sum()), int((~y).sum()))


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
    from fedistill.plots import pyplot

    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    floors = []
    fig, ax = plt.subplots(figsize=(4.4, 3.6))
    rocs = {k: (v.roc if isinstance(v, AttackMetrics) else v) for k, v in curves.items()}
    for roc in rocs.values():
        floors.append(min(fpr_resolution(roc.n_out), 1.0 / roc.n_in))
    floor = 0.5 * min(floors) if floors else 1e-3
    floor = min(floor, 1e-3)
    for i, (name, roc) in enumerate(rocs.items()):
        a = auc(roc)
        low = tpr_at_fpr(roc, 0.001)
        ax.plot(
            np.maximum(roc.fpr, floor),
            np.maximum(roc.tpr, floor),
            label=f"{name} (AUC {a:.3f}, TPR@0.1% {low:.3f})",
            drawstyle="steps-post",
            lw=1.2,
            ls=("-", "-.", ":")[i // 10 % 3],  # the colours repeat after 10 curves
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


# --------------------------------------------------------------------------- intervals

CI_METHOD = (
    "stratified percentile bootstrap over candidates (B={b}); TPR intervals widened to the "
    "Clopper-Pearson interval at the chosen threshold"
)


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for ``k`` successes in ``n`` trials."""
    a = (1.0 - level) / 2.0
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1.0 - a, k + 1, n - k))
    return lo, hi


def _tpr_at_fpr_sorted(s_in: np.ndarray, out_desc: np.ndarray, target: float) -> np.ndarray:
    """TPR@FPR ≤ target (the conservative step reading), vectorised over rows.

    ``s_in`` is B×n_in, ``out_desc`` B×n_out sorted descending. With ``k`` false positives
    allowed, a member counts iff its score is *above* the (k+1)-th largest non-member score
    (a tie would bring that non-member in too)."""
    n_out = out_desc.shape[1]
    k = math.floor(target * n_out + 1e-9)
    if k >= n_out:
        return np.ones(len(s_in))
    return (s_in > out_desc[:, k : k + 1]).mean(axis=1)


def _auc_rows(s_in: np.ndarray, s_out: np.ndarray) -> np.ndarray:
    """Mann–Whitney AUC of every row pair (ties count one half)."""
    rows = []
    for a, o in zip(s_in, np.sort(s_out, axis=1), strict=True):
        below = np.searchsorted(o, a, side="left")
        upto = np.searchsorted(o, a, side="right")
        rows.append((below + 0.5 * (upto - below)).sum() / (len(a) * len(o)))
    return np.asarray(rows)


@dataclass
class Intervals:
    """95% intervals of one attack's AUC and TPR at each low FPR."""

    auc: tuple[float, float]
    tpr_at_fpr: dict[float, tuple[float, float]]
    tpr_count: dict[float, int]  # members above the chosen threshold (the CP numerator)
    method: str


def intervals(
    scores: Sequence[float] | np.ndarray,
    is_member: Sequence[bool] | np.ndarray,
    fprs: Sequence[float] = LOW_FPRS,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Intervals:
    """Bootstrap (and Clopper–Pearson) intervals for :func:`summarize`'s AUC and TPRs."""
    s, y = _as_arrays(scores, is_member)
    s_in, s_out = s[y], s[~y]
    rng = np.random.default_rng(seed)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    aucs: list[np.ndarray] = []
    boot_tprs: dict[float, list[np.ndarray]] = {f: [] for f in fprs}
    chunk = max(1, 2_000_000 // (len(s_in) + len(s_out)))  # bounded memory for big pools
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        bi = s_in[rng.integers(0, len(s_in), (b, len(s_in)))]
        bo_desc = -np.sort(-s_out[rng.integers(0, len(s_out), (b, len(s_out)))], axis=1)
        aucs.append(_auc_rows(bi, bo_desc[:, ::-1]))
        for f in fprs:
            boot_tprs[f].append(_tpr_at_fpr_sorted(bi, bo_desc, f))
    a_lo, a_hi = np.percentile(np.concatenate(aucs), q)
    out_desc = -np.sort(-s_out)[None]
    tprs, counts = {}, {}
    for f in fprs:
        lo, hi = np.percentile(np.concatenate(boot_tprs[f]), q)
        k = round(float(_tpr_at_fpr_sorted(s_in[None], out_desc, f)[0]) * len(s_in))
        c_lo, c_hi = clopper_pearson(k, len(s_in), level)
        tprs[f] = (float(min(lo, c_lo)), float(max(hi, c_hi)))
        counts[f] = k
    return Intervals((float(a_lo), float(a_hi)), tprs, counts, CI_METHOD.format(b=n_boot))


def fpr_key(f: float) -> str:
    """The JSON key of an FPR: ``0.01 -> "0.01"``, ``0.001 -> "0.001"``."""
    return f"{f:g}"


def format_tpr(
    tpr: float, ci95: tuple[float, float] | None, resolution: float, digits: int = 3
) -> str:
    """``"0.123 [0.080, 0.170]"``, or ``"< x"`` (x the FPR resolution) for a TPR below it:
    such a TPR is no evidence of anything the trial count can see."""
    if tpr < resolution:
        return f"< {resolution:.{digits}g}"
    text = f"{tpr:.{digits}f}"
    if ci95 is not None:
        text += f" [{ci95[0]:.{digits}f}, {ci95[1]:.{digits}f}]"
    return text


def metrics_dict(
    scores: Sequence[float] | np.ndarray,
    is_member: Sequence[bool] | np.ndarray,
    fprs: Sequence[float] = LOW_FPRS,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    roc_points: int = 0,
) -> dict[str, Any]:
    """One population's cell, JSON-ready::

    {"auc", "tpr_at_fpr": {"0.01", "0.001"}, "ci95": {"auc": [lo, hi],
     "tpr_at_fpr": {"0.01": [lo, hi], ...}}, "tpr_at_fpr_text": {"0.01": "…"},
     "resolved": {"0.01": bool, …}, "fpr_resolution", "n_in", "n_out",
     "balanced_accuracy", "ci_method"[, "roc"]}
    """
    m = summarize(scores, is_member, fprs)
    iv = intervals(scores, is_member, fprs, n_boot=n_boot, seed=seed)
    res = m.fpr_resolution
    out: dict[str, Any] = {
        "auc": m.auc,
        "tpr_at_fpr": {fpr_key(f): m.tpr_at_fpr[f] for f in fprs},
        "ci95": {
            "auc": list(iv.auc),
            "tpr_at_fpr": {fpr_key(f): list(iv.tpr_at_fpr[f]) for f in fprs},
        },
        "tpr_at_fpr_text": {
            fpr_key(f): format_tpr(m.tpr_at_fpr[f], iv.tpr_at_fpr[f], res) for f in fprs
        },
        "resolved": {fpr_key(f): m.resolved[f] for f in fprs},
        "fpr_resolution": res,
        "n_in": m.n_in,
        "n_out": m.n_out,
        "balanced_accuracy": m.balanced_accuracy,
        "ci_method": iv.method,
    }
    if roc_points:
        fpr, tpr = thin_roc(m.roc, roc_points)
        out["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    return out


def population_report(
    scores: Sequence[float] | np.ndarray,
    is_member: Sequence[bool] | np.ndarray,
    exposed: Sequence[bool] | np.ndarray | None = None,
    fprs: Sequence[float] = LOW_FPRS,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """The two populations side by side: ``"all"`` (every pipeline member against the
    non-members) and ``"exposed"`` (only the exposed members against the same non-members;
    absent when none were exposed). Each value is :func:`metrics_dict`'s cell."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(is_member, dtype=bool).ravel()
    out = {"all": metrics_dict(s, y, fprs, **kwargs)}
    if exposed is not None:
        e = np.asarray(exposed, dtype=bool).ravel()
        if (e & ~y).any():
            raise ValueError("an exposed candidate must be a member")
        if e.any():
            keep = e | ~y
            out["exposed"] = metrics_dict(s[keep], e[keep], fprs, **kwargs)
    return out
