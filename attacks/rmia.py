"""RMIA — the Robust Membership Inference Attack (Zarifzadeh, Liu, Shokri & Shokri, "Low-Cost
High-Power Membership Inference Attacks", ICML 2024).

A likelihood ratio of the candidate *against the population*, not against a fitted Gaussian:

    LR_θ(x) = Pr(x | θ) / Pr(x)          Pr(x | θ): the target's probability of x's true label
                                         Pr(x) = mean over reference (shadow) models θ'
    score(x) = Pr_z[ LR_θ(x) / LR_θ(z) > γ ]      z: population samples

"member" when the score is high. Online, ``Pr(x)`` averages all reference models (half of them
trained on ``x``). Offline, only models that were not, with the paper's linear correction for
the missing IN half: ``Pr(x) = ½ ((1 + a) · Pr_OUT(x) + (1 − a))``.

Here the probabilities come from the logit-scaled confidences ``φ`` that :mod:`attacks.lira`
already collects (``p = σ(φ)``, averaged over query views, all in log space so that a
memorised ``p ≈ 1`` still ranks), and the population ``z`` is the candidate pool itself scored
by the same target — no extra queries, no extra training. With one population shared by all
candidates the score is a monotone step function of ``LR(x)``; ties inside a step are broken by
``LR(x)`` itself.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_expit, logsumexp
from scipy.stats import rankdata

from fedistill.errors import ConfigError


def log_prob(phi: np.ndarray) -> np.ndarray:
    """``log mean_views σ(φ)`` over the last axis (views)."""
    return logsumexp(log_expit(phi), axis=-1) - np.log(phi.shape[-1])


def log_pr_x(
    shadow_phi: np.ndarray, shadow_keep: np.ndarray, offline: bool = False, a: float = 0.3
) -> np.ndarray:
    """``log Pr(x)`` per candidate from the reference models' φ (K×N×Q) and membership (K×N)."""
    lp = log_prob(shadow_phi)  # K×N
    if not offline:
        return logsumexp(lp, axis=0) - np.log(len(lp))
    out = ~shadow_keep
    count = out.sum(0)
    masked = np.where(out, lp, -np.inf)
    with np.errstate(divide="ignore"):
        mean_out = np.exp(logsumexp(masked, axis=0) - np.log(np.maximum(count, 1)))
    if (count == 0).any():  # no OUT model: the median OUT probability of the others
        mean_out = np.where(count == 0, np.median(mean_out[count > 0]), mean_out)
    return np.log(0.5 * ((1 + a) * mean_out + (1 - a)))


def pairwise_score(log_ratio_x: np.ndarray, log_ratio_z: np.ndarray, gamma: float) -> np.ndarray:
    """``Pr_z[LR(x) / LR(z) > γ]`` for every x, by sorting (N log N, not N × Z)."""
    z = np.sort(log_ratio_z)
    return np.searchsorted(z, log_ratio_x - np.log(gamma), side="left") / len(z)


def rmia_scores(
    target_phi: np.ndarray,
    shadow_phi: np.ndarray,
    shadow_keep: np.ndarray,
    *,
    offline: bool = False,
    a: float = 0.3,
    gamma: float = 2.0,
    population: np.ndarray | None = None,
) -> np.ndarray:
    """RMIA score of every candidate for one target.

    ``target_phi`` N×Q (the target's φ on the candidates), ``shadow_phi`` K×N×Q and
    ``shadow_keep`` K×N (reference models and their training membership). ``population`` (a
    boolean mask or indices over the candidates) picks the ``z`` samples; default: all of them.
    """
    if not (0.0 <= a <= 1.0) or gamma < 1.0:
        raise ConfigError(f"RMIA needs 0 ≤ a ≤ 1 and γ ≥ 1, got a={a}, γ={gamma}")
    if shadow_phi.shape[1:] != target_phi.shape or shadow_keep.shape != shadow_phi.shape[:2]:
        raise ValueError("target φ must be N×Q, shadow φ K×N×Q and keep K×N")
    log_ratio = log_prob(target_phi) - log_pr_x(shadow_phi, shadow_keep, offline, a)
    z = log_ratio if population is None else log_ratio[population]
    score = pairwise_score(log_ratio, z, gamma)
    # ties (a step is 1/|z|) broken by LR(x) itself, within one step: the order is unchanged
    return score + rankdata(log_ratio) / (len(log_ratio) + 1) / (len(z) + 1)
