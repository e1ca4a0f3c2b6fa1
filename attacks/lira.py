"""LiRA — the Likelihood Ratio Attack (Carlini et al., "Membership Inference Attacks From First
Principles", IEEE S&P 2022), against whole distillation pipelines.

The attack, as in the paper's Algorithm 1, on a candidate pool of N labelled examples:

1. **Shadow pipelines.** Train K shadow pipelines, each on a random half of the pool. Each
   repeats the *whole* target pipeline (distill the half with the same method and budget, then
   train a model on the synthetic set), so the attack sees what distillation does. The halves
   follow the reference design: every candidate is IN for exactly half of the shadows.
2. **Scores.** Query every model on every candidate (optionally also on augmented views:
   shifts of ``shift`` pixels, flips only where labels survive them; worth it when the
   pipeline trains with such augmentation, harmful for an MLP on 8×8 digits) and keep the
   logit-scaled confidence
   ``φ = log(p_y / (1 − p_y))`` of the true class, which is close to Gaussian across models.
3. **Fit.** Per candidate and view, fit ``N(μ_in, σ_in²)`` to the φ of shadows that trained on
   it and ``N(μ_out, σ_out²)`` to those that did not (medians for μ; with few shadows a *fixed*,
   pooled variance is better — the paper's fixed-variance variant).
4. **Test** the target model's φ:

   * online:  ``Λ = mean_views [log N(φ; μ_in, σ_in²) − log N(φ; μ_out, σ_out²)]``;
   * offline: one-sided, OUT only, ``Λ = mean_views log Pr[Z < φ]``, ``Z ~ N(μ_out, σ_out²)``.

   High Λ ⇒ member. The target is one more pipeline on its own random half of the pool, and
   membership of every candidate is evaluated. The global-threshold attack on φ (identical in
   ranking to the loss and confidence attacks of :mod:`attacks.mia`) is reported beside it.

**Selection-aware member fit.** A distillation pipeline does not touch every member alike:
``random`` keeps ``ipc`` images per class and drops the rest, real-initialised DM / DC / KIP
start from ``ipc`` of them. A member that was dropped leaves no trace, so fitting ``μ_in`` on
every shadow that was *given* a candidate fits mostly "given but unused" — a fit blind to the
images that leak. With ``member_fit="exposed"`` (the default ``"auto"`` picks it whenever the
method records exposure, :mod:`attacks.targets`) the IN Gaussian comes from the shadows in
which the candidate was *exposed*, the OUT one from those not given it; a candidate never
exposed in a shadow borrows the mean exposed-minus-OUT offset of the others.

**RMIA** (:mod:`attacks.rmia`) is scored from the same models, online and offline.

**Populations and intervals.** Beside the historical per-attack metrics, ``populations``
reports every attack on ``"all"`` members and on the ``"exposed"`` ones, each AUC and TPR at
1% / 0.1% FPR with a 95% interval (:func:`attacks.metrics.population_report`) on the target
alone, or on ``num_targets`` independent targets attacked with the same shadows — independent
trials.

With few candidates, the FPR resolution limits what TPR at 0.1% FPR can show; ``leave_one_out``
also treats every shadow in turn as the target (the others as its shadows) and pools the
results: more (dependent) trials from the same models, no extra training. Intervals on pooled
trials treat them as independent, which they are not (``populations_pooled`` says so).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import log_ndtr

from attacks.metrics import AttackMetrics, plot_roc, population_report, summarize
from attacks.mia import model_scores
from attacks.rmia import rmia_scores
from attacks.targets import PipelineConfig, TargetModel, build_target, random_half
from fedistill.data import LabeledImages
from fedistill.errors import ConfigError
from fedistill.evaluate import accuracy
from fedistill.jobs import map_jobs

log = logging.getLogger(__name__)

FIXED_VARIANCE_BELOW = 64  # the paper: per-example variances need many shadows
ATTACKS = ("loss", "lira_online", "lira_offline", "rmia", "rmia_offline")
MEMBER_FITS = ("auto", "exposed", "members")


@dataclass
class LiRAConfig:
    num_shadows: int = 16
    shift: int = 0  # query views: also shifts by this many pixels (0: the image only)
    flip: bool | None = None  # None: the dataset's own flip rule (never for digits)
    fix_variance: bool | None = None  # None: pooled variance when num_shadows < 64
    leave_one_out: bool = True  # also pool every model-as-target (more trials at low FPR)
    member_fit: str = "auto"  # IN fit from shadows where x was "exposed" / given ("members")
    rmia_a: float = 0.3  # RMIA offline: Pr(x) = ((1 + a) Pr_OUT(x) + 1 − a) / 2
    rmia_gamma: float = 2.0  # RMIA: x beats z when LR(x) / LR(z) > γ
    n_boot: int = 1000  # bootstrap replicates for the populations' intervals
    num_targets: int = 1  # independent targets pooled into ``populations``
    jobs: int = 1  # pipelines trained at once, each in its own single-threaded process

    def validate(self) -> None:
        if self.num_shadows < 2:
            raise ConfigError("LiRA needs at least 2 shadow pipelines (one IN, one OUT)")
        if self.shift < 0:
            raise ConfigError("shift must be ≥ 0")
        if self.num_targets < 1:
            raise ConfigError("num_targets must be ≥ 1")
        if self.jobs < 1:
            raise ConfigError("jobs must be ≥ 1")
        if self.member_fit not in MEMBER_FITS:
            raise ConfigError(f"member_fit must be one of {MEMBER_FITS}, got {self.member_fit!r}")
        if not 0.0 <= self.rmia_a <= 1.0 or self.rmia_gamma < 1.0:
            raise ConfigError("RMIA needs 0 ≤ rmia_a ≤ 1 and rmia_gamma ≥ 1")

    @property
    def fixed(self) -> bool:
        if self.fix_variance is None:
            return self.num_shadows < FIXED_VARIANCE_BELOW
        return self.fix_variance


# --------------------------------------------------------------------------- step 1: halves


def balanced_keep(num_models: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """(num_models × n) membership: each candidate IN for exactly ⌊num_models/2⌋ models."""
    order = rng.random((num_models, n)).argsort(axis=0)
    return order < num_models // 2


# --------------------------------------------------------------------------- steps 3-4: fit, test


@dataclass
class GaussianFit:
    """Per-candidate, per-view Gaussians (each N×Q)."""

    mu_in: np.ndarray
    sd_in: np.ndarray
    mu_out: np.ndarray
    sd_out: np.ndarray


def _fit_side(scores: np.ndarray, mask: np.ndarray, fixed: bool):
    """Median and std of ``scores[k, j]`` over models k with ``mask[k, j]`` (K×N×Q, K×N).

    The pooled (fixed) std is that of the residuals about each candidate's own mean, so the
    spread of means across candidates does not inflate it.
    """
    n, q = scores.shape[1:]
    masked = np.where(mask[:, :, None], scores, np.nan)
    count = mask.sum(0)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: no IN / no OUT model
        mu = np.nanmedian(masked, axis=0)
        sd = np.nanstd(masked, axis=0)
        resid = masked - np.nanmean(masked, axis=0, keepdims=True)
        dof = max(int(count.sum()) - int((count > 0).sum()), 1)
        pooled = np.sqrt(np.nansum(resid**2, axis=(0, 1)) / dof)  # one per view
    pooled = np.where(np.isfinite(pooled) & (pooled > 1e-8), pooled, 1.0)
    if fixed:
        sd = np.broadcast_to(pooled, (n, q)).copy()
    else:
        few = (count < 2)[:, None] | ~np.isfinite(sd) | (sd <= 1e-3 * pooled)
        sd = np.where(few, pooled, sd)
    return mu, sd, count


def fit_gaussians(
    shadow_scores: np.ndarray,
    shadow_keep: np.ndarray,
    fixed: bool,
    shadow_in: np.ndarray | None = None,
) -> GaussianFit:
    """Fit IN and OUT Gaussians from shadows' φ (K×N×Q) and membership (K×N).

    ``shadow_in`` (K×N, optional) narrows the IN side, e.g. to the shadows in which the
    candidate was exposed; OUT is always "not given" (``~shadow_keep``). A candidate with no
    IN (or OUT) shadow borrows the mean IN−OUT offset of the others.
    """
    if shadow_scores.ndim != 3 or shadow_keep.shape != shadow_scores.shape[:2]:
        raise ValueError("shadow scores must be K×N×Q and keep K×N")
    in_mask = shadow_keep if shadow_in is None else shadow_in & shadow_keep
    mu_in, sd_in, n_in = _fit_side(shadow_scores, in_mask, fixed)
    mu_out, sd_out, n_out = _fit_side(shadow_scores, ~shadow_keep, fixed)
    if shadow_in is not None:  # given to every shadow, exposed by none: the member fit
        lost = (n_in == 0) & (n_out == 0)
        if lost.any():
            mu_m, sd_m, n_m = _fit_side(shadow_scores, shadow_keep, fixed)
            mu_in = np.where(lost[:, None], mu_m, mu_in)
            sd_in = np.where(lost[:, None], sd_m, sd_in)
            n_in = np.where(lost, n_m, n_in)
    both = (n_in > 0) & (n_out > 0)
    gap = np.nanmean((mu_in - mu_out)[both], axis=0) if both.any() else np.zeros(mu_in.shape[1])
    mu_in = np.where((n_in == 0)[:, None], mu_out + gap, mu_in)
    mu_out = np.where((n_out == 0)[:, None], mu_in - gap, mu_out)
    if not (np.isfinite(mu_in).all() and np.isfinite(mu_out).all()):
        raise ValueError("every candidate needs at least one shadow model scoring it")
    return GaussianFit(mu_in, sd_in, mu_out, sd_out)


def _logpdf(x: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mu) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi)


def lira_online(fit: GaussianFit, target_scores: np.ndarray) -> np.ndarray:
    """Online Λ per candidate: mean over views of the IN/OUT log-likelihood ratio."""
    llr = _logpdf(target_scores, fit.mu_in, fit.sd_in) - _logpdf(
        target_scores, fit.mu_out, fit.sd_out
    )
    return llr.mean(axis=1)


def lira_offline(fit: GaussianFit, target_scores: np.ndarray) -> np.ndarray:
    """Offline Λ per candidate: one-sided, mean over views of ``log Pr[Z_out < φ]``."""
    return log_ndtr((target_scores - fit.mu_out) / fit.sd_out).mean(axis=1)


def loss_from_logit(target_scores: np.ndarray) -> np.ndarray:
    """Yeom's loss attack score ``−CE = log σ(φ)`` on the un-augmented view."""
    return -np.logaddexp(0.0, -target_scores[:, 0])


def attack_scores(
    shadow_scores: np.ndarray,
    shadow_keep: np.ndarray,
    target_scores: np.ndarray,
    fixed: bool,
    *,
    shadow_exposed: np.ndarray | None = None,
    rmia_a: float = 0.3,
    rmia_gamma: float = 2.0,
) -> dict[str, np.ndarray]:
    """Membership scores of every attack for one target, from its φ (N×Q) and the shadows'.

    ``shadow_exposed`` (K×N): fit LiRA's IN side on the shadows that exposed the candidate
    (selection-aware); None: on every shadow given it."""
    fit = fit_gaussians(shadow_scores, shadow_keep, fixed, shadow_exposed)
    rmia = {"a": rmia_a, "gamma": rmia_gamma}
    return {
        "loss": loss_from_logit(target_scores),
        "lira_online": lira_online(fit, target_scores),
        "lira_offline": lira_offline(fit, target_scores),
        "rmia": rmia_scores(target_scores, shadow_scores, shadow_keep, **rmia),
        "rmia_offline": rmia_scores(
            target_scores, shadow_scores, shadow_keep, offline=True, **rmia
        ),
    }


# --------------------------------------------------------------------------- the experiment


@dataclass
class LiRAResult:
    """Scores and metrics of all attacks against one target pipeline."""

    pipeline: PipelineConfig
    config: LiRAConfig
    target: TargetModel
    is_member: np.ndarray  # ground truth for the target, over the pool
    scores: dict[str, np.ndarray]  # attack -> score per candidate
    metrics: dict[str, AttackMetrics]  # the target alone
    pooled: dict[str, AttackMetrics] = field(default_factory=dict)  # every model as target
    shadow_budgets: list[dict[str, Any]] = field(default_factory=list)
    exposed: np.ndarray | None = None  # the target's exposed members (mask over the pool)
    member_fit: str = "members"  # what LiRA's IN side was fitted on
    populations: dict[str, dict[str, Any]] = field(default_factory=dict)  # independent targets
    populations_pooled: dict[str, dict[str, Any]] = field(default_factory=dict)
    exposed_metrics: dict[str, AttackMetrics] = field(default_factory=dict)  # for ROC plots
    pooled_exposed: dict[str, AttackMetrics] = field(default_factory=dict)

    def to_dict(self, roc_points: int = 200) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline.to_dict(),
            "lira": dataclasses.asdict(self.config) | {"fixed_variance": self.config.fixed},
            "pool_size": len(self.is_member),
            "target": {
                "seed": self.target.seed,
                "members": len(self.target.members),
                "nonmembers": len(self.target.nonmembers),
                "budget": self.target.budget,
            },
            "attacks": {k: m.to_dict(roc_points) for k, m in self.metrics.items()},
            "pooled": {k: m.to_dict(roc_points) for k, m in self.pooled.items()},
            "member_fit": self.member_fit,
            "exposed": None if self.exposed is None else int(self.exposed.sum()),
            "populations": self.populations,
            "populations_pooled": self.populations_pooled,
        }


def score_models(
    pool: LabeledImages,
    cfg: PipelineConfig,
    keep: np.ndarray,
    lira: LiRAConfig,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> tuple[np.ndarray, list[TargetModel]]:
    """Train one pipeline per row of ``keep`` (M×N) and return φ of every model on every
    candidate and view (M×N×Q), with the trained targets (models dropped after row 0).

    The pipelines run in ``lira.jobs`` single-threaded worker processes
    (:func:`fedistill.jobs.map_jobs`); each is bit for bit what it gives alone in one thread."""
    shared = (pool, cfg, lira, seed, str(device))
    out = map_jobs(
        _score_one,
        list(enumerate(keep)),
        shared,
        jobs=lira.jobs,
        progress=progress,
        description=f"lira {cfg.label}",
    )
    return np.stack([row for row, _run in out]), [run for _row, run in out]


def _score_one(shared: tuple, item: tuple[int, np.ndarray]) -> tuple[np.ndarray, TargetModel]:
    """One pipeline of :func:`score_models`: train it on its half, score every candidate."""
    pool, cfg, lira, seed, device = shared
    m, mask = item
    run = build_target(cfg, pool, np.nonzero(mask)[0], seed=seed * 100_003 + m, device=device)
    row = model_scores(run.model, pool, "logit", shift=lira.shift, flip=lira.flip, device=device)
    if m > 0:
        run.model = None  # type: ignore[assignment]  # keep only the budget
    return row, run


def run_lira(
    pool: LabeledImages,
    cfg: PipelineConfig,
    lira: LiRAConfig | None = None,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> LiRAResult:
    """Algorithm 1 on ``pool``: a target on a random half, ``num_shadows`` shadows on balanced
    halves, every candidate scored by every attack. With ``num_targets`` > 1, more independent
    targets (each on its own random half, attacked with the same shadows) add independent
    trials to ``populations``; ``metrics`` stays the first target's."""
    lira = lira or LiRAConfig()
    lira.validate()
    cfg.validate()
    rng = np.random.default_rng(seed)
    n = len(pool)
    n_t = lira.num_targets
    targets = np.zeros((n_t, n), bool)
    for t in range(n_t):
        targets[t, random_half(n, rng)] = True
    keep = np.vstack([targets[:1], balanced_keep(lira.num_shadows, n, rng), targets[1:]])
    phi, runs = score_models(pool, cfg, keep, lira, seed=seed, device=device, progress=progress)
    fixed = lira.fixed
    recorded = all(r.exposed is not None for r in runs)
    exposed = np.stack([r.exposed_mask for r in runs]) if recorded else None
    selection_aware = lira.member_fit == "exposed" or (
        lira.member_fit == "auto" and exposed is not None and bool(exposed[1:].any())
    )
    if selection_aware and exposed is None:
        raise ConfigError(f"member_fit='exposed': method '{cfg.method}' records no exposure")
    opts = {"rmia_a": lira.rmia_a, "rmia_gamma": lira.rmia_gamma}

    def scores_for(t: int, others: np.ndarray) -> dict[str, np.ndarray]:
        exp = exposed[others] if selection_aware and exposed is not None else None
        return attack_scores(phi[others], keep[others], phi[t], fixed, shadow_exposed=exp, **opts)

    shadows = np.arange(1, lira.num_shadows + 1)  # extra targets sit after the shadows
    scores = scores_for(0, shadows)
    metrics = {k: summarize(s, keep[0]) for k, s in scores.items()}
    target_exposed = None if exposed is None else exposed[0]
    rows = [0, *range(lira.num_shadows + 1, len(keep))]  # the independent targets
    per_target = [scores] + [scores_for(t, shadows) for t in rows[1:]]
    populations = {
        k: population_report(
            np.concatenate([p[k] for p in per_target]),
            keep[rows].ravel(),
            None if exposed is None else exposed[rows].ravel(),
            n_boot=lira.n_boot,
        )
        for k in scores
    }
    exposed_metrics = _exposed_metrics(scores, keep[0], target_exposed)
    pooled: dict[str, AttackMetrics] = {}
    pooled_exposed: dict[str, AttackMetrics] = {}
    populations_pooled: dict[str, dict[str, Any]] = {}
    if lira.leave_one_out:
        per: dict[str, list[np.ndarray]] = {k: [] for k in scores}
        for t in range(len(keep)):
            for k, s in scores_for(t, np.r_[0:t, t + 1 : len(keep)]).items():
                per[k].append(s)
        truth = keep.ravel()
        pooled = {k: summarize(np.concatenate(v), truth) for k, v in per.items()}
        flat_exposed = None if exposed is None else exposed.ravel()
        pooled_exposed = _exposed_metrics(
            {k: np.concatenate(v) for k, v in per.items()}, truth, flat_exposed
        )
        for k, v in per.items():
            rep = population_report(np.concatenate(v), truth, flat_exposed, n_boot=lira.n_boot)
            for cell in rep.values():
                cell["independent"] = False  # leave-one-out trials share models
            populations_pooled[k] = rep
    for k, m in metrics.items():
        log.info("%s %s: AUC %.3f, TPR@1%%FPR %.3f", cfg.label, k, m.auc, m.tpr_at_fpr[0.01])
    return LiRAResult(
        cfg,
        lira,
        runs[0],
        keep[0],
        scores,
        metrics,
        pooled,
        [r.budget for r in runs[1:]],
        exposed=target_exposed,
        member_fit="exposed" if selection_aware else "members",
        populations=populations,
        populations_pooled=populations_pooled,
        exposed_metrics=exposed_metrics,
        pooled_exposed=pooled_exposed,
    )


def _exposed_metrics(
    scores: dict[str, np.ndarray], is_member: np.ndarray, exposed: np.ndarray | None
) -> dict[str, AttackMetrics]:
    """Per attack: exposed members against the non-members (empty when none are exposed)."""
    if exposed is None or not exposed.any() or exposed.sum() == is_member.sum():
        return {}
    keep = exposed | ~is_member
    return {k: summarize(s[keep], exposed[keep]) for k, s in scores.items()}


def run_mia(
    train: LabeledImages,
    test: LabeledImages | None,
    pipeline_cfg: PipelineConfig,
    *,
    num_shadows: int = 16,
    pool_size: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    lira: LiRAConfig | None = None,
    plot: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Membership inference against one pipeline, for the attack-matrix report.

    The candidate pool is a random ``pool_size`` subset of ``train`` (all of it by default).
    Returns a JSON-ready dict: ``attacks[name]`` (target only) and ``pooled[name]`` (every
    model as target) with ``auc``, ``balanced_accuracy``, ``tpr@1%fpr``, ``tpr@0.1%fpr`` (and
    whether each FPR is resolved), ``fpr_resolution`` and thinned ``roc``; the target's budget,
    member/non-member counts and (with ``test``) its test accuracy; the plot path if drawn
    (every attack on all members, and on the exposed ones where they differ).

    The two populations with intervals: ``populations[name]["all" | "exposed"]`` on the
    independent targets (``lira.num_targets``, default 1: the target alone) and ``populations_pooled[...]`` on the leave-one-out
    pool (``"independent": False``), each a :func:`attacks.metrics.metrics_dict` cell —
    ``auc``, ``tpr_at_fpr`` (``"0.01"``, ``"0.001"``), ``ci95``, ``tpr_at_fpr_text``
    (``"< x"`` below the FPR resolution), ``fpr_resolution``, ``n_in``, ``n_out``. ``name``
    runs over ``loss``, ``lira_online``, ``lira_offline``, ``rmia``, ``rmia_offline``;
    ``member_fit`` says whether LiRA's IN side was fitted on exposed shadows.
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed + 1)
    if pool_size is not None and pool_size < len(train):
        pool = train.subset(np.sort(rng.choice(len(train), pool_size, replace=False)))
    else:
        pool = train
    lira = lira or LiRAConfig()
    lira = dataclasses.replace(lira, num_shadows=num_shadows)
    res = run_lira(pool, pipeline_cfg, lira, seed=seed, device=device, progress=progress)
    out = res.to_dict()
    if test is not None:
        out["target"]["test_accuracy"] = accuracy(res.target.model, test, device)
    out["seconds"] = time.perf_counter() - t0  # the whole row: every pipeline, every attack
    if plot is not None:
        curves: dict[str, AttackMetrics] = {
            f"{k}": m for k, m in (res.pooled or res.metrics).items()
        }
        exposed = res.pooled_exposed if res.pooled else res.exposed_metrics
        curves |= {f"{k} · exposed": m for k, m in exposed.items()}
        out["plot"] = str(
            plot_roc(
                curves,
                plot,
                title=f"{pipeline_cfg.label} · {pool.info.name} · "
                f"K={num_shadows} · pool {len(pool)}",
            )
        )
    return out
