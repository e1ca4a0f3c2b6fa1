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

Two audits with power sit beside the black-box one:

* :func:`gradient_canary_audit` — white-box, of the mechanism DP-PSG runs (Nasr et al., S&P
  2021 and USENIX Security 2023, "gradient canaries"): a crafted per-sample gradient of norm C
  (a Dirac canary: C along one coordinate no other example's gradient uses) is an example of
  the data set, so every private step Poisson-samples it with probability q; each step
  releases the clipped sum plus N(0, σ²C²I). The auditor sees the released sums and scores the
  canary's presence by their projection on its direction, summed over the run's steps (or the
  exact log-likelihood ratio). Thousands of runs of the mechanism alone cost seconds, so the
  ceiling reaches past the claims that matter.
* :func:`one_run_epsilon_lb` — the one-run audit (Steinke, Nasr & Jagielski, "Privacy Auditing
  with One (1) Training Run", NeurIPS 2023): m canaries each included independently with
  probability ½ in *one* run; the auditor guesses "in" for its k highest scores and "out" for
  its k lowest; if the run is (ε, δ)-DP, the number of correct guesses W among the r = 2k is
  stochastically dominated as in their Theorem 5.2, so many canaries per run give a valid
  bound rather than a heuristic one (:func:`one_run_audit`, :func:`one_run_gradient_audit`
  for gradient canaries in one run of the mechanism, :func:`one_run_pipeline_audit` for input
  canaries in one run of a whole pipeline).

Every audit returns a :class:`DPAudit` (``to_dict()``: ``epsilon_lb``, ``ceiling``,
``claimed_epsilon``, ``accountant_epsilon``, ``trials``, ``verdict``); :func:`audit_psg` is the
white-box audit of a psg configuration. ``experiments/bench_dp_audit.py`` runs them all.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import beta, binom

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


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


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
        out["claimed_epsilon"] = _finite(self.claimed_epsilon)
        out["accountant_epsilon"] = _finite(self.accountant_epsilon)
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


def _concat(a: LabeledImages, b: LabeledImages) -> LabeledImages:
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
            data = _concat(base, canaries.subset(np.nonzero(include[r])[0]))
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
        "claimed_epsilon": _finite(claimed),
        "accountant_epsilon": _finite(accountant),
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


# --------------------------------------------------------------------------- white-box audit


@dataclass
class CanaryMechanism:
    """DP-PSG's private step seen along a gradient canary's direction (in units of C).

    Each of ``steps`` steps Poisson-samples every example with probability ``sample_rate``,
    sums their clipped gradients and adds N(0, σ²C²I) (``noise_scale`` · σ: 1 is the
    mechanism as accounted, below 1 a deliberately broken one that adds less noise than its
    claim). A Dirac canary — gradient C·e_j, with e_j a coordinate no other example's gradient
    uses (the white-box adversary crafts it) — makes coordinate j of a released sum
    ``b_t + σ·z_t`` (b_t: the canary was sampled), the other coordinates carrying nothing about
    it. Sampling and noise use DP-PSG's own samplers (``torch.rand < q``,
    :func:`fedistill.privacy.gaussian_noise`).
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    claimed_epsilon: float | None
    clip: float = 1.0
    noise_scale: float = 1.0
    accountant: str = "rdp"

    @classmethod
    def from_psg(cls, config: Any, n: int, *, noise_scale: float = 1.0) -> CanaryMechanism:
        """The mechanism a DP-PSG run with ``config`` (a ``PSGConfig``) on ``n`` examples runs:
        its q, its planned steps (all rounds) and the σ its ledger calibrates — psg's own plan
        (:func:`fedistill.distill.psg.plan_ledger`), so the audit audits what runs."""
        from fedistill.distill.psg import plan_ledger

        config.validate()
        ledger = plan_ledger(config, n)
        return cls(
            noise_multiplier=ledger.noise_multiplier,
            sample_rate=ledger.sample_rate,
            steps=config.planned_steps,
            delta=config.delta,
            claimed_epsilon=config.epsilon,
            clip=config.clip,
            noise_scale=noise_scale,
            accountant=config.accountant,
        )

    def accountant_epsilon(self) -> float:
        """The ε an accountant gives the noise actually added (σ · noise_scale)."""
        from fedistill.privacy import spent_epsilon

        sigma = self.noise_multiplier * self.noise_scale
        return spent_epsilon(sigma, self.sample_rate, self.steps, self.delta, self.accountant)

    def release(self, included: np.ndarray, generator: torch.Generator) -> np.ndarray:
        """Released coordinates along each canary, in units of C: rows of ``included`` are
        independent runs (or canaries of one run), columns the steps."""
        from fedistill.privacy import gaussian_noise

        inc = torch.as_tensor(np.asarray(included, bool))[:, None]
        sampled = torch.rand((len(inc), self.steps), generator=generator) < self.sample_rate
        std = self.noise_multiplier * self.noise_scale
        noise = gaussian_noise((len(inc), self.steps), std, generator)
        return ((sampled & inc).float() + noise).double().numpy()

    def score(self, released: np.ndarray, statistic: str = "llr") -> np.ndarray:
        """Presence score per row: ``sum`` — Σ_t ⟨ĝ_t, e_j⟩ / C; ``llr`` — the exact
        log-likelihood ratio of "in" vs "out" under the *claimed* σ, Σ_t log(1 − q + q·
        exp((2y_t − 1) / 2σ²)) (Neyman–Pearson: the most powerful test; ``sum`` when σ = 0)."""
        if statistic == "sum" or self.noise_multiplier == 0:
            return released.sum(1)
        if statistic != "llr":
            raise ConfigError(f"statistic must be 'llr' or 'sum', got '{statistic}'")
        q, s2 = self.sample_rate, self.noise_multiplier**2
        with np.errstate(divide="ignore"):
            log_out = np.log1p(-q) if q < 1 else -np.inf
        return np.logaddexp(log_out, math.log(q) + (2 * released - 1) / (2 * s2)).sum(1)


def gradient_canary_audit(
    mechanism: CanaryMechanism,
    trials: int = 10_000,
    *,
    statistic: str = "llr",
    confidence: float = 0.95,
    select_fraction: float = 0.5,
    seed: int = 0,
) -> DPAudit:
    """White-box audit of the mechanism over ``trials`` independent runs of all its steps.

    Half the runs hold the canary (balanced, shuffled). The threshold is chosen on a
    ``select_fraction`` share of the runs and the Clopper–Pearson bound counted on the rest
    (independent trials: the textbook audit, valid at ``confidence``)."""
    if trials < 8 or not 0 < select_fraction < 1:
        raise ConfigError("need ≥ 8 trials and 0 < select_fraction < 1")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 62)))
    included = rng.permutation(trials) < trials // 2
    scores = mechanism.score(mechanism.release(included, gen), statistic)
    order = rng.permutation(trials)
    n_sel = round(select_fraction * trials)
    sel, ev = order[:n_sel], order[n_sel:]
    chosen = audit_epsilon(
        scores[sel][included[sel]], scores[sel][~included[sel]], mechanism.delta, confidence
    )
    res = audit_epsilon(
        scores[ev][included[ev]],
        scores[ev][~included[ev]],
        mechanism.delta,
        confidence,
        threshold=chosen.threshold,
    )
    out = DPAudit(
        audit="white-box gradient canary",
        epsilon_lb=res.epsilon_lb,
        ceiling=res.epsilon_lb_ceiling,
        claimed_epsilon=mechanism.claimed_epsilon,
        accountant_epsilon=mechanism.accountant_epsilon(),
        trials=trials,
        delta=mechanism.delta,
        confidence=confidence,
        seconds=time.perf_counter() - t0,
        details={
            "mechanism": _mechanism_dict(mechanism),
            "statistic": statistic,
            "trials_for_threshold": int(n_sel),
            "trials_for_bound": len(ev),
            "bound": res.to_dict(),
        },
    )
    _log_audit(out)
    return out


def _mechanism_dict(m: CanaryMechanism) -> dict[str, Any]:
    d = asdict(m)
    d["claimed_epsilon"] = _finite(m.claimed_epsilon)
    return d


def _log_audit(a: DPAudit) -> None:
    log.info(
        "%s: ε_lb %.3f (ceiling %.3f) vs claimed %s, accountant %s over %d trials: %s",
        a.audit,
        a.epsilon_lb,
        a.ceiling,
        a.claimed_epsilon,
        a.accountant_epsilon,
        a.trials,
        a.verdict,
    )
    if a.verdict == "violation":
        log.error(
            "%s: ε lower bound %.3f exceeds the claim %s", a.audit, a.epsilon_lb, a.claimed_epsilon
        )


# --------------------------------------------------------------------------- one-run audit


def one_run_tail_bound(epsilon: float, m: int, r: int, v: int, delta: float) -> float:
    """Steinke, Nasr & Jagielski (2023), Theorem 5.2: if the run is (ε, δ)-DP, m canaries are
    included independently with probability ½ and the auditor makes r guesses, then
    P[W ≥ v] ≤ f(v) + 2mδ · max_{i=1..m} (f(v − i) − f(v)) / i, with
    f(x) = P[Binomial(r, e^ε / (1 + e^ε)) ≥ x]."""
    p = 1.0 / (1.0 + math.exp(-epsilon))

    def f(x: np.ndarray | int) -> np.ndarray:
        return binom.sf(np.asarray(x) - 1, r, p)  # P[X ≥ x]

    fv = float(f(v))
    if delta == 0:
        return fv
    i = np.arange(1, m + 1)
    return fv + 2 * m * delta * float(np.max((f(v - i) - fv) / i))


def one_run_epsilon_lb(
    m: int, r: int, v: int, delta: float, confidence: float = 0.95, *, hi: float = 50.0
) -> float:
    """The largest ε that ``v`` correct guesses out of ``r`` (m canaries) reject at
    ``confidence``: sup{ε : P_ε[W ≥ v] ≤ 1 − confidence} (0 when even ε = 0 is not
    rejected), by bisection on :func:`one_run_tail_bound`."""
    if not (0 <= v <= r <= m and m >= 1):
        raise ValueError(f"need 0 ≤ v ≤ r ≤ m and m ≥ 1, got m={m}, r={r}, v={v}")
    if not (0 <= delta < 1 and 0 < confidence < 1):
        raise ValueError("need 0 ≤ δ < 1 and 0 < confidence < 1")
    alpha = 1.0 - confidence
    if r == 0 or one_run_tail_bound(0.0, m, r, v, delta) > alpha:
        return 0.0
    lo = 0.0
    if one_run_tail_bound(hi, m, r, v, delta) <= alpha:
        return hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if one_run_tail_bound(mid, m, r, v, delta) <= alpha else (lo, mid)
    return lo


def one_run_audit(
    scores: Any,
    included: Any,
    k: int,
    delta: float,
    *,
    confidence: float = 0.95,
    claimed_epsilon: float | None = None,
    accountant_epsilon: float | None = None,
    audit: str = "one-run",
) -> DPAudit:
    """Guess "in" for the ``k`` highest scores and "out" for the ``k`` lowest (r = 2k guesses,
    abstain on the rest), count the correct ones and bound ε (:func:`one_run_epsilon_lb`);
    the ceiling is the bound of r correct guesses."""
    t0 = time.perf_counter()
    s = np.asarray(scores, np.float64).ravel()
    inc = np.asarray(included, bool).ravel()
    m = len(s)
    if len(inc) != m or not 1 <= k <= m // 2:
        raise ConfigError(f"need one inclusion bit per score and 1 ≤ k ≤ m/2 (m={m}, k={k})")
    order = np.argsort(s, kind="stable")
    correct = int(inc[order[m - k :]].sum() + (~inc[order[:k]]).sum())
    r = 2 * k
    out = DPAudit(
        audit=audit,
        epsilon_lb=one_run_epsilon_lb(m, r, correct, delta, confidence),
        ceiling=one_run_epsilon_lb(m, r, r, delta, confidence),
        claimed_epsilon=claimed_epsilon,
        accountant_epsilon=accountant_epsilon,
        trials=m,
        delta=delta,
        confidence=confidence,
        seconds=time.perf_counter() - t0,
        details={"canaries": m, "guesses": r, "correct": correct},
    )
    _log_audit(out)
    return out


def one_run_gradient_audit(
    mechanism: CanaryMechanism,
    canaries: int = 1000,
    k: int | None = None,
    *,
    statistic: str = "llr",
    confidence: float = 0.95,
    seed: int = 0,
) -> DPAudit:
    """One run of the mechanism with ``canaries`` Dirac gradient canaries (one coordinate
    each), each included with probability ½; ``k`` guesses each way (default: a tenth of the
    canaries)."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 62)))
    included = rng.random(canaries) < 0.5
    scores = mechanism.score(mechanism.release(included, gen), statistic)
    out = one_run_audit(
        scores,
        included,
        k or max(1, canaries // 10),
        mechanism.delta,
        confidence=confidence,
        claimed_epsilon=mechanism.claimed_epsilon,
        accountant_epsilon=mechanism.accountant_epsilon(),
        audit="one-run white-box gradient canaries",
    )
    out.seconds = time.perf_counter() - t0
    out.details.update(mechanism=_mechanism_dict(mechanism), statistic=statistic)
    return out


def one_run_pipeline_audit(
    train: LabeledImages,
    pipeline_cfg: PipelineConfig,
    *,
    canaries: int = 500,
    base_size: int = 200,
    k: int | None = None,
    canary: str = "mislabel",
    delta: float | None = None,
    confidence: float = 0.95,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> DPAudit:
    """Black-box audit of the whole pipeline in one run (Steinke, Nasr & Jagielski 2023):
    ``canaries`` input canaries, each added to a base set independently with probability ½;
    one pipeline run; each canary scored by the trained model's logit-scaled confidence;
    ``k`` guesses each way (default a tenth of the canaries). ``delta``: the accountant's δ
    when the set records one, else 1e-5."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train))
    if base_size + canaries > len(train):
        raise ConfigError(f"base_size {base_size} + {canaries} canaries exceed {len(train)}")
    base = train.subset(np.sort(order[:base_size]))
    spare = train.subset(order[base_size:])
    pool = make_canaries(spare, canaries, canary, rng)
    included = rng.random(canaries) < 0.5
    data = _concat(base, pool.subset(np.nonzero(included)[0]))
    model, _, budget = train_pipeline(pipeline_cfg, data, seed=seed, device=device)
    scores = model_scores(model, pool, "logit", device=device)[:, 0]
    privacy = budget.get("privacy") or {}
    out = one_run_audit(
        scores,
        included,
        k or max(1, canaries // 10),
        delta if delta is not None else privacy.get("delta", DEFAULT_DELTA),
        confidence=confidence,
        claimed_epsilon=privacy.get("budget", privacy.get("epsilon")),
        accountant_epsilon=privacy.get("epsilon"),
        audit="one-run black-box canaries",
    )
    out.seconds = time.perf_counter() - t0
    out.details.update(
        pipeline=pipeline_cfg.to_dict(), canary=canary, base_size=base_size, budget=budget
    )
    return out


def audit_psg(
    method_options: dict[str, Any],
    n: int,
    trials: int = 10_000,
    *,
    noise_scale: float = 1.0,
    seed: int = 0,
) -> DPAudit:
    """The white-box audit of the DP-PSG mechanism that ``method_options`` (psg's config
    overrides) run on ``n`` examples: what the attack matrix's DP-audit cell of a psg row can
    show beside the black-box bound, in about a second for 10,000 trials (ceiling ≈ 6.5)."""
    from fedistill.distill import get_method

    config = get_method("psg").make_config(**method_options)
    mechanism = CanaryMechanism.from_psg(config, n, noise_scale=noise_scale)
    return gradient_canary_audit(mechanism, trials, seed=seed)
