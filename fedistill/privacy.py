"""Differential-privacy accounting for private distillation methods (through Opacus).

Privacy facts are computed, never typed in: a private method plans its number of private
gradient evaluations (``steps``) at Poisson sampling rate ``q`` before it starts, gets its noise
multiplier σ from :func:`calibrate_noise` (or checks a given σ with :func:`check_budget`), counts
every evaluation it actually makes with a :class:`PrivacyLedger`, and at the end reads the ε it
spent back from a fresh Opacus accountant over (σ, q, steps) — :func:`spent_epsilon`. The result
is a :class:`PrivacyFacts`, written into the synthetic set's provenance as ``meta["privacy"]``.

Composition of ``steps`` identical Poisson-subsampled Gaussian mechanisms is what an Opacus
accountant records after ``steps`` calls of ``step(noise_multiplier=σ, sample_rate=q)``: its
history is the single entry ``[(σ, q, steps)]``. Both accountants here (RDP, PRV) take that
compressed history directly, so a check over thousands of steps costs one evaluation.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import asdict, dataclass

from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

from fedistill.errors import ConfigError, PrivacyBudgetExceeded

log = logging.getLogger(__name__)

ACCOUNTANTS = ("rdp", "prv")
# get_noise_multiplier's binary search stops within this much below the target ε
EPSILON_TOLERANCE = 0.01


def _check_args(sample_rate: float, steps: int, delta: float, accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise ConfigError(f"accountant must be one of {ACCOUNTANTS}, got '{accountant}'")
    if not 0 < sample_rate <= 1:
        raise ConfigError(f"sample rate q must lie in (0, 1], got {sample_rate}")
    if not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"steps must be a non-negative integer, got {steps!r}")
    if not 0 < delta < 1:
        raise ConfigError(f"delta must lie in (0, 1), got {delta}")


def _accountant(name: str, noise_multiplier: float, sample_rate: float, steps: int):
    """A fresh Opacus accountant holding ``steps`` steps of (σ, q): the history that
    ``steps`` calls of ``accountant.step(noise_multiplier=σ, sample_rate=q)`` leave."""
    acc = create_accountant(mechanism=name)
    if steps > 0:
        acc.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    return acc


def spent_epsilon(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "rdp",
) -> float:
    """ε spent by ``steps`` Poisson-subsampled Gaussian steps (noise multiplier σ, rate q) at
    ``delta``, read from a fresh Opacus accountant. No steps: 0. No noise (σ = 0): ∞."""
    _check_args(sample_rate, steps, delta, accountant)
    if steps == 0:
        return 0.0
    if noise_multiplier < 0:
        raise ConfigError(f"noise multiplier must be ≥ 0, got {noise_multiplier}")
    if noise_multiplier == 0:
        return math.inf
    acc = _accountant(accountant, noise_multiplier, sample_rate, steps)
    with warnings.catch_warnings():  # "optimal order is the largest alpha": a looser bound, fine
        warnings.simplefilter("ignore", UserWarning)
        return float(acc.get_epsilon(delta=delta))


def calibrate_noise(
    epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
) -> float:
    """The noise multiplier σ with which ``steps`` steps at rate ``sample_rate`` spend at most
    ``epsilon`` at ``delta`` (Opacus ``get_noise_multiplier``; within 0.01 below ε)."""
    _check_args(sample_rate, steps, delta, accountant)
    if not epsilon > 0:
        raise ConfigError(f"epsilon must be > 0, got {epsilon}")
    if steps == 0 or math.isinf(epsilon):
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            sigma = get_noise_multiplier(
                target_epsilon=epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
                epsilon_tolerance=EPSILON_TOLERANCE,
            )
        except ValueError as exc:  # "The privacy budget is too low."
            raise PrivacyBudgetExceeded(
                f"no noise level reaches ε = {epsilon:g}, δ = {delta:g} over {steps} steps at "
                f"sampling rate {sample_rate:.4g} ({exc}); use fewer steps or a larger budget"
            ) from None
    log.info(
        "calibrated σ = %.4f for ε = %g, δ = %g, q = %.4g, %d steps (%s)",
        sigma,
        epsilon,
        delta,
        sample_rate,
        steps,
        accountant,
    )
    return float(sigma)


def check_budget(
    epsilon: float,
    delta: float,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
) -> float:
    """The ε that (σ, q, steps) spends; raises PrivacyBudgetExceeded if it is over ``epsilon``."""
    spent = spent_epsilon(noise_multiplier, sample_rate, steps, delta, accountant)
    if spent > epsilon:
        what = "no noise (σ = 0) spends ε = ∞" if math.isinf(spent) else f"spends ε = {spent:.4g}"
        hint = (
            "; for a non-private ablation set epsilon to inf"
            if noise_multiplier == 0
            else "; raise the noise multiplier (or leave it unset to calibrate), or use fewer steps"
        )
        raise PrivacyBudgetExceeded(
            f"privacy budget exceeded: {steps} steps at σ = {noise_multiplier:g}, "
            f"q = {sample_rate:.4g} {what} at δ = {delta:g} ({accountant}), over the budget "
            f"ε = {epsilon:g}{hint}"
        )
    return spent


@dataclass
class PrivacyFacts:
    """The privacy record of a set; ``to_dict()`` is what goes into ``meta["privacy"]``
    (fields that do not apply — None — are left out)."""

    mechanism: str
    epsilon: float | None = None
    delta: float | None = None
    accountant: str | None = None
    noise_multiplier: float | None = None
    clip: float | None = None
    sample_rate: float | None = None
    steps: int | None = None
    rho: float | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


class PrivacyLedger:
    """Counts private gradient evaluations against a budget fixed before the run.

    ``PrivacyLedger(epsilon, delta, sample_rate, planned_steps, noise_multiplier=None)``
    calibrates σ when none is given, or checks the given σ against the budget (raising
    PrivacyBudgetExceeded before any data is touched). ``spend()`` is called once per private
    evaluation, *before* it runs; a step past the planned count would leave the checked budget
    and raises instead. ``facts(clip)`` reads the ε actually spent from a fresh accountant.
    """

    def __init__(
        self,
        epsilon: float,
        delta: float,
        sample_rate: float,
        planned_steps: int,
        noise_multiplier: float | None = None,
        accountant: str = "rdp",
        mechanism: str = "poisson-subsampled-gaussian",
    ) -> None:
        _check_args(sample_rate, planned_steps, delta, accountant)
        self.epsilon, self.delta = float(epsilon), float(delta)
        self.sample_rate, self.planned_steps = float(sample_rate), int(planned_steps)
        self.accountant, self.mechanism = accountant, mechanism
        if noise_multiplier is None:
            noise_multiplier = calibrate_noise(
                epsilon, delta, sample_rate, planned_steps, accountant
            )
        self.noise_multiplier = float(noise_multiplier)
        self.planned_epsilon = check_budget(
            epsilon, delta, self.noise_multiplier, sample_rate, planned_steps, accountant
        )
        self.steps = 0

    def spend(self) -> None:
        """Account one private evaluation (call before running it)."""
        if self.steps >= self.planned_steps:
            raise PrivacyBudgetExceeded(
                f"privacy budget exceeded: the run was checked for {self.planned_steps} private "
                f"steps (ε = {self.epsilon:g}, δ = {self.delta:g}) and asked for one more"
            )
        self.steps += 1

    def epsilon_spent(self) -> float:
        return spent_epsilon(
            self.noise_multiplier, self.sample_rate, self.steps, self.delta, self.accountant
        )

    def facts(self, clip: float | None = None) -> PrivacyFacts:
        return PrivacyFacts(
            mechanism=self.mechanism,
            epsilon=self.epsilon_spent(),
            delta=self.delta,
            accountant=self.accountant,
            noise_multiplier=self.noise_multiplier,
            clip=clip,
            sample_rate=self.sample_rate,
            steps=self.steps,
        )
