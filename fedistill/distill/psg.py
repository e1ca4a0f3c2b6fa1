"""``psg``: DP-PSG — Private Set Generation (Chen, Kerkouche & Fritz, NeurIPS 2022).

Gradient matching (as in DC) against *differentially private* real gradients, so the synthetic
set is (ε, δ)-DP with respect to the real data: it only ever sees the real data through the
Poisson-subsampled Gaussian mechanism below, and everything after that is post-processing.

Algorithm (the reference's ``main.py``, in the names of :class:`PSGConfig`)::

    S ← noise (never real images); labels: ipc per present class      (public randomness)
    ledger ← the client's ledger; in its first round (once per client per run):
        N ← public_size if declared, else
            N̂ ← N_true + N(0, σ_N²), σ_N spending (s·ε, s·δ), s = count_share   [secure]
            N ← max(N̂, batch_real)                     (a DP output: public from here on)
        q ← batch_real / N
        σ calibrated so that R·T private steps (R = rounds, T = iterations·outer_loop·
            batch_loop) at q spend at most what the count left, (ε − ε_N, δ − δ_N)
            [or a given σ, checked against it]
    refuse the round if the ledger's spent steps + T exceed R·T          (before any data)
    for it in 1..iterations:
        θ ← fresh random network (instance/group norm: per-sample gradients need no BatchNorm)
        for ol in 1..outer_loop:
            for b in 1..batch_loop:                                  # one private step each
                B ← Poisson sample of the real data (each example with probability q)   [secure]
                g_i ← ∇_W CE(f_θ(x_i), y_i) for i in B                # Opacus GradSampleModule
                ĝ ← (Σ_i g_i · min(1, C/‖g_i‖) + N(0, σ²C² I)) / batch_real       [secure]
                g_S ← ∇_W CE(f_θ(S), y_S)   (create_graph)
                S ← S − η_S ∇_S D(g_S, ĝ)                           # layer-wise distance
            θ ← inner_loop SGD steps of θ on S                       # (not after the last round)
    ε ← ε_N + a fresh Opacus accountant over the ledger's whole step history → meta["privacy"]

**Where the randomness comes from.** ``[secure]`` draws (the size count, the Poisson batches
and the Gaussian noise, which protect the data) come from
:func:`fedistill.privacy.secure_generator`: seeded from ``os.urandom``, never recorded, and
sampled as Opacus's ``secure_mode`` does against floating-point attacks. The published ``seed``
drives only public randomness — network initialisations, the initial noise images
(data-independent), augmentation draws and the inner-loop order — so two runs with one seed
share networks and differ only in the noise (and the count). ``secure_noise=False`` (tests,
debugging) draws them from a stream replayable from the seed: anyone with the set and its seed
can subtract the noise (and recover N from N̂), so the set is marked ``privacy.noise =
"replayable"``, ``privacy.guarantee = False``: its ε is not a guarantee.

**Rounds: one ledger per client per run.** In multi-round FedDM a client distils once per
round. ``rounds`` (R) is the schedule its budget covers: σ is calibrated once, for R·T steps,
in the client's first round, and the caller hands the same :class:`PrivacyLedger` back in every
later round (``ledger=``; :meth:`PrivacyLedger.from_state` rebuilds it from the previous set's
``meta["privacy"]``). The ε recorded after each round is the composition over every step the
client has taken so far; a round that would go past R·T raises PrivacyBudgetExceeded before it
touches data.

**What is public** (``meta["privacy"]["public"]``). The guarantee is (ε, δ)-DP under the
add/remove-one-example neighbouring relation that Opacus's accountants assume for Poisson
sampling. Treated as public: the dataset's identity, image shape and normalisation; the IPC;
the class list (which classes the client holds: the set has IPC images of each, so it shows
them — a client that wants them private must hold, or be given, all classes); every
hyperparameter, σ, C, δ, batch_real, the step count and the seed (which drives public
randomness only); the sampling rate q and the N it is computed from. **The exact size is never
released.** Under add/remove-one the exact N differs between neighbours, and q = batch_real / N
would give it away, so N is obtained in one of two ways:

* **by default, a DP estimate** (``public_size`` unset): the client releases N̂ = N + N(0, σ_N²)
  once per run (sensitivity 1; :func:`fedistill.privacy.release_count`), σ_N chosen so that the
  count spends a stated share ``count_share`` (5 %) of ε and of δ, read from the Gaussian
  mechanism's exact privacy profile. q = batch_real / max(N̂, batch_real) is then a
  post-processing of a DP output, and each example is sampled with probability q: the privacy
  analysis of the steps never needs the true N. Their σ is calibrated for what the count left,
  and the two parts compose by basic (adaptive) composition — valid although q and σ are chosen
  after seeing N̂, which a single accountant over (count, steps) would not be. The guarantee is
  the budget (ε, δ) — for *every* value of N̂ the planned steps spend at most (ε − ε_N, δ − δ_N)
  — and the recorded ``epsilon`` is ε_N + the steps' accountant ε of this run's history, never
  above it. The count's share costs little: at ε = 1 (400 steps, q = 256/1257) the steps' σ
  rises from 16.7 to 17.5, and σ_N is 72 (16 at ε = 5). The set carries ``size_estimate`` =
  max(N̂, batch_real) rounded (the N of q) and no ``source_size``; its privacy record's
  ``size`` holds N̂, σ_N and the count's (ε_N, δ_N); a federated client reports
  ``size_estimate`` as its example count. (``epsilon=inf``, the non-private ablation, has no
  budget to spend: its count has σ_N = 0 and its estimate is the exact size.)
* **declared public** (``public_size``): a round number or bound the user is willing to
  publish; no count is drawn and the steps get the whole budget; the set carries
  ``public_size`` (and no ``source_size``), reported as the client's example count.

``W`` are the weights the layer-wise distance ``D`` compares (≥ 2-D: conv and linear weights);
biases and norm parameters contribute nothing to ``D`` (as in the reference's distance), so
their gradients are neither computed, privatised nor released. The real gradient is taken over
all classes together (the synthetic batch covers all classes),
as in the reference. ``noise_multiplier=0`` switches the noise off for ablations; that spends
ε = ∞, so it needs ``epsilon=inf`` (otherwise the run stops with PrivacyBudgetExceeded).

**CPU budget.** The reference runs 1,000 × 10 × 10 = 100,000 private steps with ConvNet-128
and ``lr_img`` 0.1 on a GPU. The defaults here run 20 × 10 × 2 = 400 private steps with a
ConvNet-32 (≈ 0.5 CPU-s per step on MNIST; about 3 CPU minutes in all) and a larger image
learning rate (10), which was the most effective single change on the MNIST subset (ε = 10,
quick 50-epoch evaluation: lr 1 → 71 %, 3 → 76 %, 10 → 78 %). The clip C = 0.1 is the
reference's: every per-sample gradient is clipped, so the matched real gradient is a mean of
directions and the noise-to-signal ratio σ/B does not depend on C. For 8×8 images the network
has two blocks (:func:`resolve_depth`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedistill.augment import DSA, default_strategy
from fedistill.data import LabeledImages
from fedistill.distill import register
from fedistill.distill._common import init_images, make_set, seeded
from fedistill.distill.dc import match_loss, matched_parameters
from fedistill.errors import ConfigError, PrivacyBudgetExceeded
from fedistill.models import build_model
from fedistill.privacy import (
    ACCOUNTANTS,
    NEIGHBOURING,
    DPCount,
    PrivacyLedger,
    count_noise,
    gaussian_epsilon,
    gaussian_noise,
    noise_generator,
    release_count,
    secure_generator,
)
from fedistill.progress import progress_bar
from fedistill.synthetic import SyntheticSet

log = logging.getLogger(__name__)

MECHANISM = "dp-psg: poisson-subsampled gaussian on clipped per-sample gradients"


@dataclass
class PSGConfig:
    epsilon: float = 10.0  # target ε; inf: no budget (σ defaults to 0 then: no noise)
    delta: float = 1e-5
    clip: float = 0.1  # per-sample gradient norm bound C (the reference's max_norm)
    noise_multiplier: float | None = None  # None: calibrated from (ε, δ, q, steps); 0: no noise
    accountant: str = "rdp"  # "rdp" | "prv"
    iterations: int = 20  # fresh networks (reference: 1,000)
    outer_loop: int = 10  # matching rounds per network (reference: get_loops, 10 at IPC 10)
    batch_loop: int = 2  # private real gradients (and image updates) per round (reference: 10)
    inner_loop: int = 5  # SGD steps of the network on the synthetic set between rounds
    batch_real: int = 256  # expected Poisson batch; q = batch_real / N
    batch_train: int = 256  # batch of the inner network updates
    lr_img: float = 10.0  # SGD, momentum 0.5 (reference: 0.1 over 100× more steps)
    momentum_img: float = 0.5
    lr_net: float = 0.01
    model: str = "convnet"
    width: int = 32  # distillation network only (reference: 128); evaluation is separate
    depth: int | None = None  # None: 3, or 2 for images under 16 px (see resolve_depth)
    norm: str = "instance"  # "instance" | "group" (no BatchNorm with per-sample gradients)
    init: str = "noise"  # always noise: a private set never starts from real images
    learn_labels: bool = False  # learn soft labels (N×K probability rows)
    lr_label: float = 1.0
    dsa: bool = False
    dsa_strategy: str | None = None  # None: the dataset's default
    secure_noise: bool = True  # False: noise replayable from the seed (tests only; no guarantee)
    rounds: int | None = None  # rounds the budget covers (None: 1; FedDM sets its rounds)
    public_size: int | None = None  # declared public N for q = batch_real / N (None: DP count)
    count_share: float = 0.05  # share of (ε, δ) the DP count of N spends (public_size unset)

    def validate(self) -> None:
        if self.init != "noise":
            raise ConfigError(
                f"DP-PSG initialises the synthetic set from noise only (got init='{self.init}'): "
                "starting from real images would publish them without privacy"
            )
        if not self.epsilon > 0:
            raise ConfigError(f"epsilon must be > 0 (inf for no budget), got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"delta must lie in (0, 1), got {self.delta}")
        if not (self.clip > 0 and math.isfinite(self.clip)):
            raise ConfigError(f"clip must be a positive number, got {self.clip}")
        if self.noise_multiplier is not None and not self.noise_multiplier >= 0:
            raise ConfigError(f"noise_multiplier must be ≥ 0, got {self.noise_multiplier}")
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(f"accountant must be one of {ACCOUNTANTS}, got '{self.accountant}'")
        for name in ("iterations", "outer_loop", "batch_loop", "batch_real", "batch_train"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.rounds is not None and self.rounds < 1:
            raise ConfigError(f"rounds must be ≥ 1, got {self.rounds}")
        if self.public_size is not None and self.public_size < self.batch_real:
            raise ConfigError(
                f"public_size {self.public_size} is below batch_real {self.batch_real}"
            )
        if not 0 < self.count_share < 1:
            raise ConfigError(f"count_share must lie in (0, 1), got {self.count_share}")
        if self.inner_loop < 0:
            raise ConfigError(f"inner_loop must be ≥ 0, got {self.inner_loop}")
        if self.lr_img < 0 or self.lr_net < 0 or self.lr_label < 0:
            raise ConfigError("learning rates must be ≥ 0")
        if self.width < 1 or (self.depth is not None and self.depth < 1):
            raise ConfigError(f"width and depth must be ≥ 1, got {self.width}, {self.depth}")
        if self.model != "convnet":
            raise ConfigError(f"DP-PSG distils with the convnet, got model '{self.model}'")
        if self.norm not in ("instance", "group", "none"):
            raise ConfigError(
                f"norm must be 'instance', 'group' or 'none' (BatchNorm mixes examples, so "
                f"per-sample gradients are undefined), got '{self.norm}'"
            )

    @property
    def steps(self) -> int:
        """Private gradient evaluations one run (one round) makes."""
        return self.iterations * self.outer_loop * self.batch_loop

    @property
    def planned_steps(self) -> int:
        """Private gradient evaluations the budget covers: every round's."""
        return (self.rounds or 1) * self.steps


# --------------------------------------------------------------------------- the private step


def _grad_sample_module():
    """Opacus's ``GradSampleModule``, imported on first use (Opacus costs ~1.5 s to import,
    which every process loading the method registry would otherwise pay)."""
    from opacus import GradSampleModule

    return GradSampleModule


def private_gradient(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    clip: float,
    noise_multiplier: float,
    expected_batch: float,
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """The DP gradient of the cross-entropy loss over the batch (x, y), per parameter of
    ``model`` (in ``model.parameters()`` order, trainable ones):
    ``(Σ_i clip_C(∇ℓ(x_i, y_i)) + N(0, σ²C²)) / expected_batch``, where ``clip_C`` scales a
    per-sample gradient to norm at most C (``min(1, C / (‖g‖ + 1e-6))``, as Opacus).

    ``model`` is a plain module (wrapped in an Opacus ``GradSampleModule`` for this call) or a
    ``GradSampleModule`` built with ``loss_reduction="sum"`` (reused: cheaper in a loop). An empty
    batch (possible under Poisson sampling) contributes only noise. Noise is drawn from
    ``generator`` (on its device) when given, else from a fresh
    :func:`~fedistill.privacy.secure_generator`; always with the floating-point mitigation of
    Opacus's ``secure_mode`` (:func:`~fedistill.privacy.gaussian_noise`).
    """
    grad_sample_module = _grad_sample_module()
    owned = not isinstance(model, grad_sample_module)
    gsm = grad_sample_module(model, loss_reduction="sum") if owned else model
    if gsm.loss_reduction != "sum":
        raise ConfigError("private_gradient needs a GradSampleModule with loss_reduction='sum'")
    params = [p for p in gsm.parameters() if p.requires_grad]
    was_training = gsm.training
    gsm.train()  # Opacus captures activations in training mode only
    try:
        if len(x) > 0:
            loss = F.cross_entropy(gsm(x), y, reduction="sum")
            with warnings.catch_warnings():  # "full backward hook ... no inputs require grad"
                warnings.filterwarnings("ignore", "Full backward hook", UserWarning)
                loss.backward()
            per_sample = [p.grad_sample for p in params]
            norms = torch.stack([g.reshape(len(x), -1).norm(2, dim=1) for g in per_sample], 1)
            factor = (clip / (norms.norm(2, dim=1) + 1e-6)).clamp(max=1.0)
            summed = [torch.einsum("i,i...->...", factor, g) for g in per_sample]
        else:
            summed = [torch.zeros_like(p) for p in params]
        out = []
        if noise_multiplier > 0 and generator is None:
            generator = secure_generator()
        for s in summed:
            if noise_multiplier > 0:
                noise = gaussian_noise(s.shape, noise_multiplier * clip, generator)
                s = s + noise.to(s.device)
            out.append((s / expected_batch).detach())
        return out
    finally:
        for p in params:
            p.grad = None
        gsm.set_grad_sample_to_none()
        if owned:
            gsm.to_standard_module()  # remove Opacus's hooks and attributes from the model
        gsm.train(was_training)


def resolve_depth(depth: int | None, side: int) -> int:
    """The ConvNet depth to distil with: ``depth`` if given; else 3 (the reference), or 2 for
    images under 16 px — on 8×8 digits a third block's instance norm sees 2×2 maps, and
    gradient matching from noise then finds nothing to match (measured: chance accuracy)."""
    if depth is not None:
        return depth
    return 3 if side >= 16 else 2


def poisson_sample(n: int, rate: float, generator: torch.Generator) -> Tensor:
    """Indices of a Poisson sample: each of ``n`` examples independently with probability q."""
    return torch.nonzero(torch.rand(n, generator=generator) < rate, as_tuple=True)[0]


# --------------------------------------------------------------------------- the method


def _syn_loss(logits: Tensor, labels: Tensor, label_logits: Tensor | None) -> Tensor:
    if label_logits is None:
        return F.cross_entropy(logits, labels)
    return -(label_logits.softmax(1) * logits.log_softmax(1)).sum(1).mean()


def plan_ledger(
    config: PSGConfig, size: float | None = None, *, count: DPCount | None = None
) -> PrivacyLedger:
    """The privacy plan of a run with ``config``: q = batch_real / N, every round's planned
    steps, and the σ calibrated for them (or a given σ checked). N is the declared
    ``public_size``; else the estimate of the released DP ``count``, whose share of the budget
    is reserved first; else (audits, which assume a size) ``size``, with the count's share
    reserved as a run would. The DP audits audit exactly this mechanism (its σ is the steps')."""
    if config.public_size is not None:
        count, n = None, float(config.public_size)
    else:
        if count is None:
            if size is None:
                raise ConfigError("plan_ledger needs public_size, a DP count or a size")
            eps_n, delta_n = count_budget(config)
            sigma_n = count_noise(eps_n, delta_n)
            count = DPCount(float(size), sigma_n, gaussian_epsilon(sigma_n, delta_n), delta_n)
        n = max(count.estimate, float(config.batch_real))
    return PrivacyLedger(
        config.epsilon,
        config.delta,
        config.batch_real / n,
        config.planned_steps,
        noise_multiplier=config.noise_multiplier,
        accountant=config.accountant,
        mechanism=MECHANISM,
        count=count,
    )


def count_budget(config: PSGConfig) -> tuple[float, float]:
    """(ε_N, δ_N): the share of the budget the DP count of N may spend."""
    return config.count_share * config.epsilon, config.count_share * config.delta


def released_n(ledger: PrivacyLedger, config: PSGConfig) -> int:
    """The N a set releases (``size_estimate`` or ``public_size``): the N of its q."""
    if config.public_size is not None:
        return config.public_size
    assert ledger.count is not None
    return round(max(ledger.count.estimate, config.batch_real))


@register("psg", PSGConfig, "DP-PSG: gradient matching to DP real gradients, (ε, δ) via Opacus")
def distill_psg(
    real: LabeledImages,
    ipc: int,
    config: PSGConfig,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    ledger: PrivacyLedger | None = None,
    record: dict[str, Any] | None = None,
) -> SyntheticSet:
    """DP-PSG (Chen et al. 2022): synthetic images from noise, matched to private gradients.

    ``ledger``: the client's ledger from its earlier rounds (None in its first round: one is
    planned for ``config.rounds`` rounds). It is spent in place, and its state is recorded in
    the set's ``meta["privacy"]`` (``PrivacyLedger.from_state`` rebuilds it from there).
    ``record["exposed"]`` is always empty: no real image is ever copied into the set.
    """
    config.validate()
    device = torch.device(device)
    n = len(real)
    if config.batch_real > n:
        raise ConfigError(f"batch_real {config.batch_real} exceeds the {n} real images")
    noise_gen = noise_generator(seed, config.secure_noise)  # what protects the data
    if not config.secure_noise:
        log.warning("DP-PSG noise is replayable from the seed: the ε is not a guarantee")

    # budget first: N (declared, or a DP count drawn once per client per run), then σ
    # calibrated (or a given σ checked) once, for every round's private steps
    if ledger is None:
        count = None
        if config.public_size is None:
            count = release_count(n, *count_budget(config), noise_gen)  # DP: N̂ is public
        ledger = plan_ledger(config, count=count)
    else:
        _check_ledger(ledger, config)
    ledger.reserve(config.steps)  # a round past the plan stops here, before any data
    sigma, q = ledger.noise_multiplier, ledger.sample_rate
    log.info(
        "DP-PSG: %d private steps (%d of %d spent before), q = %.4g, σ = %.4g, C = %g, "
        "planned ε = %.4g (δ = %g)",
        config.steps,
        ledger.steps,
        ledger.planned_steps,
        q,
        sigma,
        config.clip,
        ledger.planned_epsilon,
        config.delta,
    )

    gen = seeded(seed)  # public randomness: networks, initial noise, augmentation, order
    images, labels = init_images(real, ipc, "noise", gen, record)  # noise, always
    image_syn = images.to(device).requires_grad_(True)
    label_syn = labels.to(device)
    groups = [{"params": [image_syn], "lr": config.lr_img, "momentum": config.momentum_img}]
    label_logits = None
    if config.learn_labels:
        k = real.num_classes
        label_logits = (F.one_hot(label_syn, k).float() * math.log(10 * k)).requires_grad_(True)
        groups.append({"params": [label_logits], "lr": config.lr_label, "momentum": 0.5})
    opt_img = torch.optim.SGD(groups)

    x_real, y_real = real.images.to(device), real.labels.to(device)
    augment = DSA(config.dsa_strategy or default_strategy(real.info)) if config.dsa else None
    config = dataclasses.replace(config, depth=resolve_depth(config.depth, real.info.height))
    model_kw = {"width": config.width, "depth": config.depth, "norm": config.norm}
    loss_avg = 0.0
    with progress_bar("psg", config.steps, progress) as bar:
        for it in range(config.iterations):
            net = build_model(config.model, real.info, **model_kw).to(device).train()
            # a shadow copy carries Opacus's hooks, so the synthetic branch's double backward
            # runs on a plain network (as the reference does)
            # Only the weights the distance compares (≥ 2-D) are privatised and released.
            shadow = copy.deepcopy(net)
            for p in shadow.parameters():
                p.requires_grad_(p.ndim > 1)
            shadow = _grad_sample_module()(shadow, loss_reduction="sum")
            params = matched_parameters(net)
            opt_net = torch.optim.SGD(net.parameters(), lr=config.lr_net)
            for ol in range(config.outer_loop):
                for _ in range(config.batch_loop):
                    ledger.spend()  # counted before it runs: never a step over the budget
                    idx = poisson_sample(n, q, noise_gen).to(device)
                    xr, yr, xs = x_real[idx], y_real[idx], image_syn
                    if augment is not None:
                        s = int(torch.randint(1 << 30, (1,), generator=gen))
                        xr = augment(xr, seed=s) if len(xr) else xr
                        xs = augment(xs, seed=s)
                    shadow._module.load_state_dict(net.state_dict())
                    g_real = private_gradient(
                        shadow,
                        xr,
                        yr,
                        clip=config.clip,
                        noise_multiplier=sigma,
                        expected_batch=config.batch_real,
                        generator=noise_gen,
                    )
                    loss_syn = _syn_loss(net(xs), label_syn, label_logits)
                    g_syn = torch.autograd.grad(loss_syn, params, create_graph=True)
                    loss = match_loss(g_syn, g_real)
                    opt_img.zero_grad(set_to_none=True)
                    loss.backward()
                    opt_img.step()
                    loss_avg = 0.9 * loss_avg + 0.1 * loss.item() if loss_avg else loss.item()
                    bar.advance(match=loss_avg)
                if ol == config.outer_loop - 1:
                    break
                _train_net(net, opt_net, image_syn, label_syn, label_logits, config, augment, gen)
            shadow.to_standard_module()
            log.debug("iteration %d/%d: matching loss %.4f", it + 1, config.iterations, loss_avg)

    facts = ledger.facts(
        clip=config.clip,
        noise="secure" if config.secure_noise else "replayable",
        guarantee=config.secure_noise,
        neighbouring=NEIGHBOURING,
        public=public_facts(config),
        **(
            {"size": {"source": "declared", "public_size": config.public_size}}
            if config.public_size
            else {}
        ),
    )
    log.info(
        "DP-PSG: ε = %.4g at δ = %g spent over %d steps (all rounds so far)",
        facts.epsilon,
        facts.delta,
        ledger.steps,
    )
    out_labels = label_syn if label_logits is None else label_logits.detach().softmax(1)
    return make_set(
        image_syn.detach(),
        out_labels,
        real,
        method="psg",
        ipc=ipc,
        seed=seed,
        iterations=config.iterations,
        config=config,
        extra={
            "privacy": facts.to_dict(),  # the exact N is not released; the N of q is
            ("public_size" if config.public_size else "size_estimate"): released_n(ledger, config),
        },
        release_size=False,
    )


def public_facts(config: PSGConfig) -> list[str]:
    """What the guarantee treats as public (``meta["privacy"]["public"]``)."""
    size = (
        f"N = public_size = {config.public_size} (declared by the user; no count drawn)"
        if config.public_size is not None
        else (
            f"N = max(N̂, batch_real), N̂ a DP estimate of the size (Gaussian count, "
            f"{config.count_share:g} of ε and of δ; composed with the steps, see size)"
        )
    )
    return [
        "dataset, image shape and normalisation",
        "ipc",
        "class list (the classes the client holds: the set has ipc images of each)",
        f"sample rate q = batch_real / N, {size}; the exact size is not released",
        "hyperparameters: σ, C, δ, batch_real, steps, rounds",
        "seed (drives public randomness only: networks, initial noise images, augmentation, order)",
    ]


def _check_ledger(ledger: PrivacyLedger, config: PSGConfig) -> None:
    """A ledger handed back from an earlier round must be this run's: same budget, δ,
    accountant, N (declared, or the run's DP count, never drawn again), q and σ (a changed
    one would void the calibration)."""
    want = {
        "epsilon": config.epsilon,
        "delta": config.delta,
        "accountant": config.accountant,
        "mechanism": MECHANISM,
    }
    got = {k: getattr(ledger, k) for k in want}
    bad = [k for k in want if want[k] != got[k]]
    if config.public_size is not None:
        n = float(config.public_size)
        if ledger.count is not None:
            bad.append("size (a DP count, not the declared public_size)")
    elif ledger.count is None:
        bad.append("size (no DP count: was public_size declared?)")
        n = math.nan
    else:
        n = max(ledger.count.estimate, float(config.batch_real))
        if not math.isclose(ledger.count.delta, count_budget(config)[1], rel_tol=1e-12):
            bad.append("count_share")
    q = config.batch_real / n
    if not math.isclose(ledger.sample_rate, q, rel_tol=1e-12):
        bad.append(f"sample_rate ({ledger.sample_rate:.6g} vs {q:.6g})")
    if config.noise_multiplier is not None and config.noise_multiplier != ledger.noise_multiplier:
        bad.append("noise_multiplier")
    if bad:
        raise PrivacyBudgetExceeded(
            f"the privacy ledger handed to this round was planned for another run "
            f"(differs in {', '.join(bad)}); a client keeps one ledger for the whole run"
        )


def _train_net(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    image_syn: Tensor,
    label_syn: Tensor,
    label_logits: Tensor | None,
    config: PSGConfig,
    augment: DSA | None,
    gen: torch.Generator,
) -> None:
    """``inner_loop`` SGD steps of the network on (a detached copy of) the synthetic set."""
    x = image_syn.detach()
    soft = None if label_logits is None else label_logits.detach()
    for _ in range(config.inner_loop):
        idx = torch.randperm(len(x), generator=gen)[: config.batch_train].to(x.device)
        xb = augment(x[idx], generator=gen) if augment is not None else x[idx]
        loss = _syn_loss(net(xb), label_syn[idx], None if soft is None else soft[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
