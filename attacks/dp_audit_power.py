"""DP audits with power: the white-box gradient-canary audit of DP-PSG's mechanism (Nasr et al.
2021/2023) and the one-run audit (Steinke, Nasr & Jagielski, NeurIPS 2023). The statistics,
the verdict and :class:`~attacks.dp_audit.DPAudit` they return, and the black-box audit of a
whole pipeline, are in :mod:`attacks.dp_audit` (its docstring explains all three)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import binom

from attacks.dp_audit import (
    DEFAULT_DELTA,
    DPAudit,
    audit_epsilon,
    concat_images,
    finite_or_none,
    make_canaries,
)
from attacks.mia import model_scores
from attacks.targets import PipelineConfig, train_pipeline
from fedistill.data import LabeledImages
from fedistill.errors import ConfigError

log = logging.getLogger(__name__)


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
    d["claimed_epsilon"] = finite_or_none(m.claimed_epsilon)
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
    data = concat_images(base, pool.subset(np.nonzero(included)[0]))
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
