"""Empirical lower bounds on ε: auditing a differentially private pipeline with canaries
(Jagielski, Ullman & Oprea, "Auditing Differentially Private Machine Learning", NeurIPS 2020;
Nasr et al., "Adversary Instantiation", IEEE S&P 2021).

If a mechanism M is (ε, δ)-DP, every test that tells "trained with the canary" from "trained
without it" has ``FPR + e^ε·FNR ≥ 1 − δ`` and ``FNR + e^ε·FPR ≥ 1 − δ``. So an attack's error
rates bound ε from below:

    ε_lb = max( log((1 − δ − FNR) / FPR),  log((1 − δ − FPR) / FNR) ).

The audit:

1. Fix a base training set and a few *canaries* (mislabelled real images, or noise images with a
   random label) — the examples most likely to be memorised.
2. Run the whole pipeline many times; in each run each canary is included with probability 1/2
   (balanced: each canary IN in exactly half of the runs). Score every canary on every run's
   model by its logit-scaled confidence φ (``attacks.mia.logit_confidence``).
3. Pick the threshold on one half of the runs, then count true/false positives on the other
   half; replace FPR and FNR by their **Clopper–Pearson** upper bounds (two-sided interval at
   the given confidence) so ε_lb holds with that confidence rather than by luck.

A lower bound above the accountant's claimed ε means the implementation leaks more than it
says: a bug. With several canaries per run the trials share models and are not independent;
the interval is then a heuristic (one canary per run is the textbook audit).

**Every bound beside its ceiling.** A trial count caps the bound: with n trials per side and no
error at all, Clopper–Pearson still allows FPR up to ``1 − (α/2)^{1/n}``, so ε_lb can never
exceed ``log(1/that)`` (32 trials: 2.13). Each result carries that **ceiling**, the claimed ε
and the accountant's ε, and a verdict: ``violation`` (ε_lb > claim), ``inconclusive`` (the
ceiling is below the claim: the audit could not have shown a violation), else ``consistent``.

Two audits with power sit beside the black-box one, in :mod:`attacks.dp_audit_power`:

* :func:`attacks.dp_audit_power.gradient_canary_audit` — white-box, of the mechanism DP-PSG runs (Nasr et al., S&P
  2021 and USENIX Security 2023, "gradient canaries"): a crafted per-sample gradient of norm C
  (a Dirac canary: C along one coordinate no other example's gradient uses) is an example of
  the data set, so every private step Poisson-samples it with probability q; each step
  releases the clipped sum plus N(0, σ²C²I). The auditor sees the released sums and scores the
  canary's presence by their projection on its direction, summed over the run's steps (or the
  exact log-likelihood ratio). Thousands of runs of the mechanism alone cost seconds, so the
  ceiling reaches past the claims that matter.
* :func:`attacks.dp_audit_power.one_run_epsilon_lb` — the one-run audit (Steinke, Nasr & Jagielski, "Privacy Auditing
  with One (1) Training Run", NeurIPS 2023): m canaries each included independently with
  probability ½ in *one* run; the auditor guesses "in" for its k highest scores and "out" for
  its k lowest; if the run is (ε, δ)-DP, the number of correct guesses W among the r = 2k is
  stochastically dominated as in their Theorem 5.2, so many canaries per run give a valid
  bound rather than a heuristic one (:func:`one_run_audit`, :func:`one_run_gradient_audit`
  for gradient canaries in one run of the mechanism, :func:`one_run_pipeline_audit` for input
  canaries in one run of a whole pipeline).

Every audit returns a :class:`DPAudit` (``to_dict()``: ``epsilon_lb``, ``ceiling``,
``claimed_epsilon``, ``accountant_epsilon``, ``trials``, ``verdict``); :func:`attacks.dp_audit_power.audit_psg`
is the white-box audit of a psg configuration. ``experiments/bench_dp_audit.py`` runs them all.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import beta

from attacks.lira import balanced_keep
from attacks.mia import model_scores
from attacks.targets import PipelineConfig, train_pipeline
from fedistill.data import LabeledImages
from fedistill.errors import ConfigError
from fedistill.progress import progress_bar

log = logging.getLogger(__name__)

CANARY_KINDS = ("mislabel", "noise")
DEFAULT_DELTA = 1e-5


# --------------------------------------------------------------------------- the statistics


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial interval for ``k`` successes in ``n`` trials."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 ≤ k ≤ n and n > 0, got k={k}, n={n}")
    a = (1.0 - confidence) / 2.0
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1.0 - a, k + 1, n - k))
    return lo, hi


def _cp_upper(k: np.ndarray, n: int, confidence: float) -> np.ndarray:
    a = (1.0 - confidence) / 2.0
    k = np.asarray(k, dtype=np.float64)
    with np.errstate(all="ignore"):
        hi = beta.ppf(1.0 - a, k + 1, n - k)
    return np.where(k >= n, 1.0, hi)


def epsilon_from_rates(fpr: Any, fnr: Any, delta: float) -> np.ndarray:
    """``max(log((1−δ−FNR)/FPR), log((1−δ−FPR)/FNR))``, at least 0 (elementwise)."""
    fpr, fnr = np.asarray(fpr, np.float64), np.asarray(fnr, np.float64)
    with np.errstate(all="ignore"):
        a = np.log(np.clip(1.0 - delta - fnr, 0, None)) - np.log(fpr)
        b = np.log(np.clip(1.0 - delta - fpr, 0, None)) - np.log(fnr)
    eps = np.fmax(np.where(np.isnan(a), -np.inf, a), np.where(np.isnan(b), -np.inf, b))
    return np.maximum(eps, 0.0)


@dataclass
class AuditResult:
    """ε lower bound of one threshold test ("canary was in" iff score ≥ threshold)."""

    epsilon_lb: float  # with Clopper–Pearson upper bounds on FPR and FNR
    threshold: float
    tpr: float
    fpr: float
    counts: dict[str, int]  # tp, fn, fp, tn
    delta: float
    confidence: float
    fpr_upper: float
    fnr_upper: float
    epsilon_point: float  # from the raw rates, without the interval (optimistic; context only)
    epsilon_lb_ceiling: float  # the best bound these counts could give (perfect separation)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; an unbounded ``epsilon_point`` (no errors at all) becomes None."""
        out = asdict(self)
        out["epsilon_point"] = self.epsilon_point if math.isfinite(self.epsilon_point) else None
        return out


def _bound_at(s_in: np.ndarray, s_out: np.ndarray, thr: np.ndarray, delta: float, conf: float):
    tp = len(s_in) - np.searchsorted(np.sort(s_in), thr, side="left")  # #{s_in ≥ thr}
    fp = len(s_out) - np.searchsorted(np.sort(s_out), thr, side="left")
    fn = len(s_in) - tp
    fpr_hi = _cp_upper(fp, len(s_out), conf)
    fnr_hi = _cp_upper(fn, len(s_in), conf)
    return epsilon_from_rates(fpr_hi, fnr_hi, delta), tp, fp, fpr_hi, fnr_hi


def audit_epsilon(
    scores_in: Any,
    scores_out: Any,
    delta: float,
    confidence: float = 0.95,
    *,
    threshold: float | None = None,
) -> AuditResult:
    """The ε lower bound of the test "in iff score ≥ threshold" on these trials.

    ``scores_in``: attack scores of runs that contained the canary; ``scores_out``: runs that
    did not. With ``threshold=None`` the threshold giving the largest bound is chosen *on these
    same trials* (slightly optimistic: choose it on separate trials and pass it in for a
    bound that holds at the stated confidence; :func:`run_dp_audit` does so).
    """
    s_in = np.asarray(scores_in, np.float64).ravel()
    s_out = np.asarray(scores_out, np.float64).ravel()
    if len(s_in) == 0 or len(s_out) == 0:
        raise ValueError("need trials both with and without the canary")
    if not (0 <= delta < 1 and 0 < confidence < 1):
        raise ValueError("need 0 ≤ δ < 1 and 0 < confidence < 1")
    if threshold is None:
        cands = np.unique(np.r_[s_in, s_out, np.inf])
    else:
        cands = np.array([float(threshold)])
    eps, tp, fp, fpr_hi, fnr_hi = _bound_at(s_in, s_out, cands, delta, confidence)
    i = int(np.argmax(eps))
    n_in, n_out = len(s_in), len(s_out)
    counts = {
        "tp": int(tp[i]),
        "fn": int(n_in - tp[i]),
        "fp": int(fp[i]),
        "tn": int(n_out - fp[i]),
    }
    tpr, fpr = counts["tp"] / n_in, counts["fp"] / n_out
    ceiling = float(
        epsilon_from_rates(_cp_upper(0, n_out, confidence), _cp_upper(0, n_in, confidence), delta)
    )
    return AuditResult(
        epsilon_lb=float(eps[i]),
        threshold=float(cands[i]),
        tpr=tpr,
        fpr=fpr,
        counts=counts,
        delta=delta,
        confidence=confidence,
        fpr_upper=float(fpr_hi[i]),
        fnr_upper=float(fnr_hi[i]),
        epsilon_point=float(epsilon_from_rates(fpr, 1.0 - tpr, delta)),
        epsilon_lb_ceiling=ceiling,
    )


# --------------------------------------------------------------------------- the verdict

VERDICTS = ("consistent", "violation", "inconclusive")


def verdict(epsilon_lb: float, ceiling: float, claimed: float | None) -> str:
    """``violation`` if the bound exceeds the claim; else ``inconclusive`` if even a perfect
    attack could not have shown the claim (ceiling below it; no claim counts as ε = ∞); else
    ``consistent``."""
    claim = math.inf if claimed is None else float(claimed)
    if epsilon_lb > claim:
        return "violation"
    if ceiling < claim:
        return "inconclusive"
    return "consistent"


def finite_or_none(x: Any) -> float | None:
    """``x`` as a float where it is a finite number; None for ∞, NaN, None or a non-number
    (JSON has no ∞: None stands for it, and for "no claim")."""
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None


@dataclass
class DPAudit:
    """One audit's outcome: the ε lower bound beside its ceiling, the claim and the
    accountant's ε. ``to_dict()`` (JSON-ready; None stands for ∞ or "no claim") has the keys
    the attack matrix renders: ``epsilon_lb``, ``ceiling``, ``claimed_epsilon``,
    ``accountant_epsilon``, ``trials``, ``verdict``."""

    audit: str
    epsilon_lb: float
    ceiling: float
    claimed_epsilon: float | None
    accountant_epsilon: float | None
    trials: int
    delta: float
    confidence: float
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return verdict(self.epsilon_lb, self.ceiling, self.claimed_epsilon)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["claimed_epsilon"] = finite_or_none(self.claimed_epsilon)
        out["accountant_epsilon"] = finite_or_none(self.accountant_epsilon)
        out["verdict"] = self.verdict
        return out


# --------------------------------------------------------------------------- the experiment


def make_canaries(
    source: LabeledImages, count: int, kind: str, rng: np.random.Generator
) -> LabeledImages:
    """``count`` canaries: ``mislabel`` — real images of ``source`` relabelled to a random other
    class; ``noise`` — standard-normal images (in the normalised space) with random labels."""
    k = source.num_classes
    if kind == "mislabel":
        if count > len(source):
            raise ConfigError(f"{count} mislabelled canaries need as many spare real images")
        idx = rng.choice(len(source), count, replace=False)
        imgs = source.images[torch.as_tensor(idx)].clone()
        true = source.labels[torch.as_tensor(idx)].numpy()
        labels = (true + rng.integers(1, k, size=count)) % k
    elif kind == "noise":
        imgs = torch.from_numpy(rng.standard_normal((count, *source.info.shape))).float()
        labels = rng.integers(0, k, size=count)
    else:
        raise ConfigError(f"unknown canary kind '{kind}'; choose one of {CANARY_KINDS}")
    return LabeledImages(imgs, torch.as_tensor(labels, dtype=torch.int64), source.info)


def concat_images(a: LabeledImages, b: LabeledImages) -> LabeledImages:
    return LabeledImages(torch.cat([a.images, b.images]), torch.cat([a.labels, b.labels]), a.info)


def canary_trials(
    train: LabeledImages,
    cfg: PipelineConfig,
    *,
    num_runs: int,
    base_size: int,
    canaries_per_run: int,
    canary: str,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Run the pipeline ``num_runs`` times on base ∪ (a random half of the canaries).

    Returns φ (runs × canaries), inclusion (runs × canaries, bool), and each run's budget.
    """
    if num_runs < 4 or canaries_per_run < 1:
        raise ConfigError("an audit needs ≥ 4 runs and ≥ 1 canary")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train))
    if base_size + canaries_per_run > len(train):
        raise ConfigError(f"base_size {base_size} + canaries exceed the {len(train)} examples")
    base = train.subset(np.sort(order[:base_size]))
    spare = train.subset(order[base_size:])
    canaries = make_canaries(spare, canaries_per_run, canary, rng)
    if canaries_per_run == 1:  # one canary: each run in or out, balanced over runs
        include = (rng.permutation(num_runs) < num_runs // 2)[:, None]
    else:
        include = balanced_keep(num_runs, canaries_per_run, rng)
    phi = np.zeros(include.shape)
    budgets = []
    with progress_bar(f"audit {cfg.label}", num_runs, progress) as bar:
        for r in range(num_runs):
            data = concat_images(base, canaries.subset(np.nonzero(include[r])[0]))
            model, _, budget = train_pipeline(cfg, data, seed=seed * 100_003 + r, device=device)
            phi[r] = model_scores(model, canaries, "logit", device=device)[:, 0]
            budgets.append(budget)
            bar.advance()
    return phi, include, budgets


def run_dp_audit(
    train: LabeledImages,
    pipeline_cfg: PipelineConfig,
    *,
    num_runs: int = 32,
    base_size: int = 200,
    canaries_per_run: int = 8,
    canary: str = "mislabel",
    delta: float | None = None,
    confidence: float = 0.95,
    select_fraction: float = 0.5,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """The whole audit of one pipeline; a JSON-ready dict for the report.

    ``delta``: the accountant's δ when the pipeline records one, else 1e-5. The threshold is
    chosen on a ``select_fraction`` share of the runs and the bound computed on the rest
    (``select_fraction=0``: choose and count on all runs, optimistic). ``claimed_epsilon`` is
    the budget any run's synthetic set was planned against (None for non-private pipelines),
    ``accountant_epsilon`` the largest ε a run's accountant spent, ``consistent`` says whether
    ``epsilon_lb ≤ claimed_epsilon``; ``ceiling`` is the largest bound ``trials`` (canary ×
    run pairs counted for the bound) could show and ``verdict`` the ruling of :func:`verdict`
    (a 16-run audit's ceiling is about 2: "inconclusive" for any claim above it).
    """
    if not 0 <= select_fraction < 1:
        raise ConfigError("select_fraction must be in [0, 1)")
    phi, include, budgets = canary_trials(
        train,
        pipeline_cfg,
        num_runs=num_runs,
        base_size=base_size,
        canaries_per_run=canaries_per_run,
        canary=canary,
        seed=seed,
        device=device,
        progress=progress,
    )
    privacy = [b["privacy"] for b in budgets if b.get("privacy")]
    eps_spent = [p["epsilon"] for p in privacy if p.get("epsilon") is not None]
    eps_claims = [p.get("budget", p.get("epsilon")) for p in privacy]
    eps_claims = [e for e in eps_claims if e is not None]
    claimed = max(eps_claims) if eps_claims else None
    accountant = max(eps_spent) if eps_spent else None
    if delta is None:
        deltas = [p["delta"] for p in privacy if p.get("delta") is not None]
        delta = max(deltas) if deltas else DEFAULT_DELTA

    n_sel = round(select_fraction * num_runs)
    runs = np.random.default_rng(seed + 2).permutation(num_runs)
    sel, ev = (runs[:n_sel], runs[n_sel:]) if n_sel > 0 else (runs, runs)
    if n_sel > 0:
        chosen = audit_epsilon(phi[sel][include[sel]], phi[sel][~include[sel]], delta, confidence)
        thr: float | None = chosen.threshold
    else:
        thr = None
    res = audit_epsilon(
        phi[ev][include[ev]], phi[ev][~include[ev]], delta, confidence, threshold=thr
    )
    consistent = claimed is None or res.epsilon_lb <= claimed
    ruling = verdict(res.epsilon_lb, res.epsilon_lb_ceiling, claimed)
    if not consistent:
        log.error(
            "%s: empirical ε lower bound %.3f exceeds the claimed ε %.3f",
            pipeline_cfg.label,
            res.epsilon_lb,
            claimed,
        )
    return {
        "pipeline": pipeline_cfg.to_dict(),
        "claimed_epsilon": finite_or_none(claimed),
        "accountant_epsilon": finite_or_none(accountant),
        "consistent": consistent,
        "verdict": ruling,
        "ceiling": res.epsilon_lb_ceiling,
        "trials": int(include[ev].size),
        **res.to_dict(),
        "num_runs": num_runs,
        "runs_for_threshold": int(n_sel),
        "runs_for_bound": len(ev),
        "canary": {"kind": canary, "per_run": canaries_per_run, "base_size": base_size},
        "budget": budgets[0],
        "note": (
            "textbook audit (independent trials)"
            if canaries_per_run == 1
            else "several canaries per run share models: the interval is heuristic"
        ),
    }
