"""Differential-privacy accounting for private distillation methods (through Opacus).

Privacy facts are computed, never typed in: a private method plans its number of private
gradient evaluations (``steps``) at Poisson sampling rate ``q`` before it starts, gets its noise
multiplier σ from :func:`calibrate_noise` (or checks a given σ with :func:`check_budget`), counts
every evaluation it actually makes with a :class:`PrivacyLedger`, and at the end reads the ε it
spent back from a fresh Opacus accountant over (σ, q, steps) — :func:`spent_epsilon`. The result
is a :class:`PrivacyFacts`, written into the synthetic set's provenance as ``meta["privacy"]``.
A client taking part in several rounds keeps one ledger for the whole run: σ is calibrated
once for every step of every round, and the ε recorded after each round is the composition of
the whole history so far (:func:`history_epsilon`).

**The dataset size.** Under add/remove-one the exact size N differs between neighbours, so a
private method must not release it, nor anything computed from it (q = batch / N). Where no
public N is declared it releases a DP count first (:func:`release_count`: N + N(0, σ_N²), the
Gaussian mechanism with sensitivity 1), spending a stated share of (ε, δ) read from the
mechanism's exact privacy profile (:func:`gaussian_epsilon`); q is then computed from the
released estimate, so it is public (post-processing). Because the steps' q and σ are chosen
*after* seeing the count, the two parts compose by basic (adaptive) composition: for every
value of the count the steps are calibrated to spend at most what is left, (ε − ε_N, δ − δ_N),
so the whole run is (ε, δ)-DP; the ledger records ``epsilon`` = ε_N + the steps' accountant ε
(:class:`DPCount`, :class:`PrivacyLedger`). An RDP composition of the count with the steps in one
accountant history would be a little tighter but is not valid when q and σ depend on the
count's output (the RDP composition theorem needs the second mechanism's bound uniformly over
the first's outputs, which a calibration to the realised q does not give).

Noise and sampling that protect data come from :func:`secure_generator` (unrecorded OS
entropy), never from a run's published seed (:func:`noise_generator`).

Composition of ``steps`` identical Poisson-subsampled Gaussian mechanisms is what an Opacus
accountant records after ``steps`` calls of ``step(noise_multiplier=σ, sample_rate=q)``: its
history is the single entry ``[(σ, q, steps)]``. Both accountants here (RDP, PRV) take that
compressed history directly, so a check over thousands of steps costs one evaluation.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import asdict, dataclass

import torch

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


def _accountant(name: str, history: list[tuple[float, float, int]]):
    """A fresh Opacus accountant holding ``history``: an entry (σ, q, steps) is what ``steps``
    calls of ``accountant.step(noise_multiplier=σ, sample_rate=q)`` leave.

    Opacus is imported here, not at the top: it costs about 1.5 s (it pulls in scipy, sympy and
    torch.distributed), paid by every process that imports this module — each federated client
    and the server included — and needed only where ε is computed."""
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=name)
    acc.history = list(history)
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
    acc = _accountant(accountant, [(float(noise_multiplier), float(sample_rate), int(steps))])
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
    from opacus.accountants.utils import get_noise_multiplier  # lazily: see _accountant

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


# --------------------------------------------------------------------------- secure noise

NEIGHBOURING = "add/remove one example (Poisson subsampling; what Opacus's accountants assume)"


def secure_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator seeded from 63 bits of OS entropy (``os.urandom``), never recorded.

    Noise and sampling that protect data draw from this, never from a run's published seed:
    whoever holds a set and its seed must not be able to regenerate the noise and subtract it.
    (Opacus's ``secure_mode`` goes further with a CSPRNG, ``torchcsprng``, which is not
    installed here; a Philox/Mersenne stream from an unrecorded 63-bit seed is what the
    reference code's clock-seeded generator offered, with a seed that cannot be guessed.)
    """
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
    return gen


def noise_generator(
    seed: int, secure: bool = True, device: torch.device | str = "cpu"
) -> torch.Generator:
    """The generator of a private mechanism's noise and sampling: :func:`secure_generator`, or
    (``secure=False``, tests and debugging only) one replayable from ``seed``, a stream apart
    from the seed's public draws. A replayable stream voids the guarantee: mark it so."""
    if secure:
        return secure_generator(device)
    gen = torch.Generator(device=torch.device(device))
    return gen.manual_seed((int(seed) * 0x9E3779B1 + 0x5EED) % (1 << 63))


def gaussian_noise(
    shape: torch.Size | tuple[int, ...],
    std: float,
    generator: torch.Generator,
    *,
    secure: bool = True,
) -> torch.Tensor:
    """N(0, std²) noise of ``shape`` on the generator's device. ``secure``: as Opacus's
    ``secure_mode``, the mean of 4 draws times 2 (sum of 4 halves), so the floating-point
    pattern of one Gaussian sample does not give it away (Holohan & Braghin 2021, §5.1)."""
    if std == 0:
        return torch.zeros(shape, device=generator.device)
    if not secure:
        return torch.randn(shape, generator=generator, device=generator.device) * std
    torch.randn((1, 1), generator=generator, device=generator.device)  # thrown away, as Opacus
    out = torch.zeros(shape, device=generator.device)
    for _ in range(4):
        out += torch.randn(shape, generator=generator, device=generator.device)
    return out * (std / 2)


# --------------------------------------------------------------------------- the size count

COUNT_MECHANISM = "gaussian count of the examples (sensitivity 1 under add/remove-one)"


def _normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def gaussian_delta(noise_multiplier: float, epsilon: float) -> float:
    """The exact δ(ε) of the Gaussian mechanism with sensitivity 1 and noise std σ (Balle &
    Wang 2018, Thm 8): Φ(1/2σ − εσ) − e^ε Φ(−1/2σ − εσ). σ = 0: 1 (no privacy)."""
    if noise_multiplier <= 0:
        return 1.0
    a, b = 1 / (2 * noise_multiplier), epsilon * noise_multiplier
    tail = _normal_cdf(-a - b)
    second = math.exp(epsilon + math.log(tail)) if tail > 0 else 0.0
    return max(0.0, _normal_cdf(a - b) - second)


def gaussian_epsilon(noise_multiplier: float, delta: float) -> float:
    """The smallest ε at which the sensitivity-1 Gaussian mechanism with std σ is (ε, δ)-DP
    (:func:`gaussian_delta` inverted by bisection, rounded up). σ = 0: ∞."""
    if not 0 < delta < 1:
        raise ConfigError(f"delta must lie in (0, 1), got {delta}")
    if noise_multiplier <= 0:
        return math.inf
    lo, hi = 0.0, 1.0
    while gaussian_delta(noise_multiplier, hi) > delta:
        lo, hi = hi, 2 * hi
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if gaussian_delta(noise_multiplier, mid) <= delta else (mid, hi)
    return hi


def count_noise(epsilon: float, delta: float) -> float:
    """The std σ_N of a sensitivity-1 Gaussian count that is (ε, δ)-DP (the smallest, by
    bisection on the exact profile, rounded up). ε = ∞: 0 (no noise)."""
    if not epsilon > 0 or not 0 < delta < 1:
        raise ConfigError(f"a count needs ε > 0 and δ in (0, 1), got ε = {epsilon}, δ = {delta}")
    if math.isinf(epsilon):
        return 0.0
    lo, hi = 0.0, 1.0
    while gaussian_delta(hi, epsilon) > delta:
        lo, hi = hi, 2 * hi
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if gaussian_delta(mid, epsilon) <= delta else (mid, hi)
    return hi


@dataclass(frozen=True)
class DPCount:
    """A released DP count of a client's examples: ``estimate`` = N + N(0, σ_N²) (public: the
    DP output), with the noise std ``noise_multiplier`` σ_N (the sensitivity is 1), and the
    (``epsilon``, ``delta``) it spends, read from the Gaussian mechanism's exact profile. As
    an Opacus accountant history entry it is ``(σ_N, 1.0, 1)``."""

    estimate: float
    noise_multiplier: float
    epsilon: float
    delta: float

    def to_dict(self) -> dict:
        return {
            "source": "dp-count",
            "mechanism": COUNT_MECHANISM,
            "estimate": self.estimate,
            "noise_multiplier": self.noise_multiplier,
            "epsilon": self.epsilon,
            "delta": self.delta,
        }

    @classmethod
    def from_dict(cls, d: dict) -> DPCount:
        return cls(
            float(d["estimate"]),
            float(d["noise_multiplier"]),
            float(d["epsilon"]),
            float(d["delta"]),
        )


def release_count(n: int, epsilon: float, delta: float, generator: torch.Generator) -> DPCount:
    """Release the count ``n`` under (ε, δ)-DP (add/remove-one: sensitivity 1): the Gaussian
    mechanism with the σ_N of :func:`count_noise`, its noise drawn from ``generator`` (a
    :func:`noise_generator`: secure, or replayable and then marked so by the caller)."""
    sigma = count_noise(epsilon, delta)
    noise = float(gaussian_noise((1,), sigma, generator)[0]) if sigma else 0.0
    spent = gaussian_epsilon(sigma, delta)
    log.info("DP count of the examples: σ_N = %.4g, ε = %.4g at δ = %g", sigma, spent, delta)
    return DPCount(float(n) + noise, sigma, spent, float(delta))


# --------------------------------------------------------------------------- the record


@dataclass
class PrivacyFacts:
    """The privacy record of a set; ``to_dict()`` is what goes into ``meta["privacy"]``
    (fields that do not apply — None — are left out).

    ``epsilon`` is the ε spent so far (over every round the ledger has seen); ``budget`` the
    target it was planned against; ``history`` the Opacus accountant history
    ``[(σ, q, steps), …]`` of the private steps it was read from; ``noise`` is ``"secure"`` or
    ``"replayable"`` (then ``guarantee`` is False: ε is a number, not a guarantee);
    ``neighbouring`` and ``public`` state what the guarantee is about and what it treats as
    public. ``size`` says where the N of q = batch / N came from: a released DP count
    (:meth:`DPCount.to_dict`, ``source = "dp-count"``; then ``epsilon`` = the count's ε + the
    steps' ε, ``composition`` says so) or a declared public size (``source = "declared"``).
    """

    mechanism: str
    epsilon: float | None = None
    delta: float | None = None
    accountant: str | None = None
    noise_multiplier: float | None = None
    clip: float | None = None
    sample_rate: float | None = None
    steps: int | None = None
    rho: float | None = None
    budget: float | None = None
    planned_steps: int | None = None
    history: list[list[float]] | None = None
    noise: str | None = None
    guarantee: bool | None = None
    neighbouring: str | None = None
    public: list[str] | None = None
    size: dict | None = None
    composition: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def history_epsilon(
    history: list[tuple[float, float, int]], delta: float, accountant: str = "rdp"
) -> float:
    """ε of an Opacus accountant whose history is ``[(σ, q, steps), …]`` (a fresh one, so the
    figure is read back, never typed in). Empty: 0; any σ = 0 entry: ∞."""
    entries = [(float(s), float(q), int(n)) for s, q, n in history if int(n) > 0]
    for _s, q, n in entries:
        _check_args(q, n, delta, accountant)
    if not entries:
        return 0.0
    if any(s == 0 for s, _, _ in entries):
        return math.inf
    acc = _accountant(accountant, entries)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(acc.get_epsilon(delta=delta))


class PrivacyLedger:
    """One client's privacy ledger: private evaluations counted against a budget fixed before
    the first of them, over every round it takes part in.

    ``PrivacyLedger(epsilon, delta, sample_rate, planned_steps, noise_multiplier=None)``
    calibrates σ once for all ``planned_steps`` (e.g. rounds × steps per round) when none is
    given, or checks the given σ against the budget (raising PrivacyBudgetExceeded before any
    data is touched). ``reserve(n)`` refuses a round that would go past the plan before it
    starts; ``spend()`` is called once per private evaluation, *before* it runs.
    ``epsilon_spent()`` reads the composed ε of the whole history from a fresh accountant;
    ``state()`` / :meth:`from_state` carry the ledger from one round to the next.

    ``count``: the :class:`DPCount` released before the steps (the N that set ``sample_rate``).
    It is spent first; the steps are calibrated (or checked) for what is left,
    (ε − ε_N, δ − δ_N), and ``epsilon_spent()`` is ε_N + the steps' ε at δ − δ_N (basic
    composition: valid although q and σ were chosen after seeing the count).
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
        count: DPCount | None = None,
    ) -> None:
        _check_args(sample_rate, planned_steps, delta, accountant)
        self.epsilon, self.delta = float(epsilon), float(delta)
        self.sample_rate, self.planned_steps = float(sample_rate), int(planned_steps)
        self.accountant, self.mechanism = accountant, mechanism
        self.count = count
        self.steps_epsilon, self.steps_delta = self.epsilon, self.delta
        if count is not None:
            if not (count.delta < self.delta and count.epsilon <= self.epsilon):
                raise PrivacyBudgetExceeded(
                    f"the size count spends (ε = {count.epsilon:.4g}, δ = {count.delta:g}), "
                    f"all of the budget (ε = {self.epsilon:g}, δ = {self.delta:g})"
                )
            self.steps_delta = self.delta - count.delta
            if math.isfinite(count.epsilon):  # ε = ∞ (no budget): the steps' is ∞ too
                self.steps_epsilon = self.epsilon - count.epsilon
        if noise_multiplier is None:
            noise_multiplier = calibrate_noise(
                self.steps_epsilon, self.steps_delta, sample_rate, planned_steps, accountant
            )
        self.noise_multiplier = float(noise_multiplier)
        self.planned_epsilon = self._count_epsilon() + check_budget(
            self.steps_epsilon,
            self.steps_delta,
            self.noise_multiplier,
            sample_rate,
            planned_steps,
            accountant,
        )
        self.history: list[tuple[float, float, int]] = []

    def _count_epsilon(self) -> float:
        return 0.0 if self.count is None else self.count.epsilon

    @property
    def steps(self) -> int:
        """Private evaluations spent so far (all rounds)."""
        return sum(n for _, _, n in self.history)

    def reserve(self, steps: int) -> None:
        """Refuse, before any data is touched, a run of ``steps`` more evaluations that would
        go past the plan."""
        if self.steps + steps > self.planned_steps:
            raise PrivacyBudgetExceeded(
                f"privacy budget exceeded: this client's ledger (ε = {self.epsilon:g}, "
                f"δ = {self.delta:g}) was planned for {self.planned_steps} private steps, "
                f"{self.steps} are spent, and {steps} more were asked for"
            )

    def spend(self) -> None:
        """Account one private evaluation (call before running it)."""
        if self.steps >= self.planned_steps:
            raise PrivacyBudgetExceeded(
                f"privacy budget exceeded: the run was checked for {self.planned_steps} private "
                f"steps (ε = {self.epsilon:g}, δ = {self.delta:g}) and asked for one more"
            )
        entry = (self.noise_multiplier, self.sample_rate)
        if self.history and self.history[-1][:2] == entry:  # as Opacus's accountants merge
            self.history[-1] = (*entry, self.history[-1][2] + 1)
        else:
            self.history.append((*entry, 1))

    def epsilon_spent(self) -> float:
        """ε spent so far: the count's (if any) plus the steps' from a fresh accountant."""
        steps = history_epsilon(self.history, self.steps_delta, self.accountant)
        return self._count_epsilon() + steps

    def facts(self, clip: float | None = None, **extra) -> PrivacyFacts:
        """The record of what was spent so far; ``extra``: further :class:`PrivacyFacts`
        fields (noise, guarantee, neighbouring, public, size)."""
        if self.count is not None:
            extra["size"] = self.count.to_dict()
            extra["composition"] = (
                f"basic: ε = ε_count + ε_steps, ε_steps from a fresh {self.accountant} "
                f"accountant over the history at δ − δ_count = {self.steps_delta:g}"
            )
        return PrivacyFacts(
            mechanism=self.mechanism,
            epsilon=self.epsilon_spent(),
            delta=self.delta,
            accountant=self.accountant,
            noise_multiplier=self.noise_multiplier,
            clip=clip,
            sample_rate=self.sample_rate,
            steps=self.steps,
            budget=self.epsilon,
            planned_steps=self.planned_steps,
            history=[[s, q, n] for s, q, n in self.history],
            **extra,
        )

    def state(self) -> dict:
        """JSON-ready state (what :meth:`from_state` rebuilds the ledger from)."""
        out = {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "sample_rate": self.sample_rate,
            "planned_steps": self.planned_steps,
            "noise_multiplier": self.noise_multiplier,
            "accountant": self.accountant,
            "mechanism": self.mechanism,
            "history": [[s, q, n] for s, q, n in self.history],
        }
        if self.count is not None:
            out["size"] = self.count.to_dict()
        return out

    @classmethod
    def from_state(cls, state: dict) -> PrivacyLedger:
        """The ledger :meth:`state` (or a set's ``meta["privacy"]``, whose ``budget`` is the
        target ε) describes; the budget is re-checked for the planned steps."""
        try:
            size = state.get("size") or {}
            count = DPCount.from_dict(size) if size.get("source") == "dp-count" else None
            ledger = cls(
                float(state.get("budget", state["epsilon"])),
                float(state["delta"]),
                float(state["sample_rate"]),
                int(state["planned_steps"]),
                noise_multiplier=float(state["noise_multiplier"]),
                accountant=str(state["accountant"]),
                mechanism=str(state["mechanism"]),
                count=count,
            )
            ledger.history = [(float(s), float(q), int(n)) for s, q, n in state["history"]]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"not a privacy ledger's state: {exc}") from None
        if ledger.steps > ledger.planned_steps:
            raise PrivacyBudgetExceeded(
                f"ledger state spends {ledger.steps} steps, over its plan of {ledger.planned_steps}"
            )
        return ledger


def ledger_of(privacy: dict | None) -> PrivacyLedger | None:
    """The ledger a set's ``meta["privacy"]`` records (None when it records none: a method
    without a ledger, or a non-private set) — what a client hands to its next round."""
    if not privacy or "planned_steps" not in privacy or "history" not in privacy:
        return None
    return PrivacyLedger.from_state(privacy)


def privacy_summary(privacy: dict | None) -> str:
    """One line for the CLI and results: the ε spent, δ, budget and steps, how the N of the
    sampling rate was obtained (a DP count, with its estimate, σ_N and ε share, or a declared
    public size), and whether it is a guarantee — a set whose noise is replayable from its seed
    says so in capitals."""
    if not privacy or privacy.get("epsilon") is None:
        return ""
    eps = privacy["epsilon"]
    text = f"ε = {eps:.3g}" if math.isfinite(eps) else "ε = ∞ (no noise)"
    if privacy.get("delta") is not None:
        text += f" (δ = {privacy['delta']:g}"
        if privacy.get("budget") is not None and privacy.get("planned_steps"):
            text += (
                f"; budget {privacy['budget']:g} over {privacy['planned_steps']} steps, "
                f"{privacy.get('steps', 0)} spent"
            )
        text += ")"
    size = privacy.get("size") or {}
    if size.get("source") == "dp-count" and isinstance(size.get("estimate"), int | float):
        text += (
            f"; N from a DP count: {size['estimate']:.0f} (σ_N = {size.get('noise_multiplier', 0):.3g}"
            f", ε {size.get('epsilon', math.nan):.3g} of the budget)"
        )
    elif size.get("source") == "declared":
        text += f"; N declared public: {size.get('public_size')}"
    if privacy.get("noise") == "replayable" or privacy.get("guarantee") is False:
        text += " — NOT A GUARANTEE: noise replayable from the seed (secure_noise=False)"
    return text


def released_size(meta: dict, exact: int) -> int:
    """The example count a client reports beside its set (``num-examples``): a private set's
    declared public N (``public_size``) or its DP estimate (``size_estimate``), never its exact
    size; a set that releases neither (a non-private method: it keeps ``source_size``) reports
    ``exact``. A set whose privacy record says its size is private but that releases no
    substitute is refused rather than reported exactly."""
    for key in ("public_size", "size_estimate"):
        value = meta.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    if (meta.get("privacy") or {}).get("size"):
        raise ConfigError("a private set without a released size (public_size, size_estimate)")
    return int(exact)
