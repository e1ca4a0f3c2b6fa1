"""DOORPING (Liu et al., NDSS 2023): a backdoor trigger optimised inside the distillation loop.

Liu, Li, Backes, Shen, Zhang: "Backdoor Attacks Against Dataset Distillation" (NDSS'23); the
reference code is ``liuyugeng/baadd`` (``DC/main.py``, ``DC/utils.py: update_trigger``).

A fraction ``p`` of the real training images (any class) gets the trigger and the ``target``
label. The trigger is then re-optimised after every outer iteration of the distillation against
the network of that moment, and the poisoned images are re-stamped with it, so the synthetic
set learns whatever the current trigger excites::

    P ← ⌊p·|D|⌋ random indices of D;  τ ← a random patch (mask: a s×s square at the
        bottom-right, 1 px in from the border);  D[P] ← stamp(D[P], τ), labels ← target
    S ← IPC real images per class of the poisoned D
    DC (gradient matching, ``loop="dc"``):
      for k = 1..K:  θ ← a fresh ConvNet
        for t = 1..outer:
          S ← S − η ∇_S Σ_c D(∇_θ ℓ(θ; S_c), ∇_θ ℓ(θ; B_c))        B_c ⊂ D (with D[P])
          if t < outer:  train θ for ``inner`` epochs on S;  τ ← UPDATE(τ, θ);  re-stamp D[P]
    DM (distribution matching, ``loop="dm"``):
      for k = 1..K:  ψ ← a fresh random ConvNet;  τ ← UPDATE(τ, ψ);  re-stamp D[P]
        S ← S − η ∇_S Σ_c ‖mean ψ(B_c) − mean ψ(S_c)‖²
    return S, τ                                               (the LAST τ is the test trigger)

    UPDATE(τ, f):  U ← the top-k units of f's penultimate layer by Σ|W| of their weights into
      the classifier;  a_0 ← f_U(x_τ) on the trigger image x_τ (the patch on a black image);
      Adam (lr 0.08, betas 0.9/0.99) on τ's pixels, gradient masked to the patch, minimising
      MSE(f_U(x_τ), α·a_0), at most ``trigger_steps`` steps, stopping once the MSE is small

An image that drives the selected units far up pulls the target class towards it: in DC its
gradients dominate the target class's real gradient, in DM it shifts the target class's mean
embedding, and the synthetic target images must follow. The random-trigger control is the same
loop with τ never updated; NAIVE in the same loop is BadNets' white patch, never updated
(:func:`attacks.backdoor.run_backdoor` with ``controls=True``).

Where this follows the reference and where not:

* poisoned images: ``⌊p·|D|⌋`` of the whole training set, any class, relabelled (as
  ``doorping_perm``); the reference's default ``p`` is 0.01 and its trigger 2×2 px;
* the trigger is fed alone on a black image (the reference's ``init_trigger`` is the patch on
  pixel value 0); ``trigger_input="stamped"`` uses a batch of clean non-target images instead;
* no clamping (``clamp=False``) as the reference: the pattern may leave the valid pixel range
  and the test trigger is the same unclamped pattern; ``clamp=True`` keeps it a real image;
* the reference's units are the 192 hidden units of its two-layer classifier head, chosen by
  Σ|W| of their incoming weights; this ConvNet has a linear classifier, so its penultimate
  layer is the embedding and the units are chosen by Σ|W| of their outgoing classifier weights
  (each embedding unit's incoming weights are a convolution filter shared by every position);
* the stop rule is relative, MSE < ``cost_threshold`` × mean(goal²) (default 0.005: the
  reference's absolute 0.5 at its typical goal of 10), because activations on 8×8 images are
  small; a unit at 0 (after ReLU) gets the goal α × 0.01;
* DM has no trained network: ψ, the fresh random network of the iteration, is both the one the
  trigger is optimised against and the one the class means are matched under.

Measured (2026-12-02, 2-core AMD EPYC at load 10-16, 3 final models each):

* ``experiments/bench_doorping.py`` (digits, IPC 10, p = 0.01 = 12 images, ConvNet-32 without
  norm for distillation and evaluation, 300 epochs, unclamped, ≤ 1000 steps an update): DC, 10
  outer iterations, 90 updates: DOORPING ASR 100.0 ± 0.0 %, random-trigger control 3.2 %,
  NAIVE 9.7 %, the clean pipeline with DOORPING's trigger 0.0 %; DM, 200 iterations and
  updates: 100.0 %, 2.4 %, 14.1 %, 0.0 %. The target (≥ 20 points over the random trigger,
  above NAIVE) is met, at a price: the trigger ends at normalised values of −3,600 (DC) and
  +9,400 (DM), no pixel a camera gives, and clean accuracy falls 7-10 points (70.5 % and
  67.7 % against 78 % for the controls). ``clamp=True`` keeps it an image; not measured here.
* MNIST subset in the attack matrix (p = 0.1, the rows' instance-normalised ConvNet-32, ≤ 200
  steps an update, MLP final models): DOORPING 9.8 % (DM, 50 updates) and 4.3 % (DC, 8
  updates) against NAIVE in the same loops at 31.7 % and 33.9 %: instance norm bounds what one
  2×2 patch can do to a unit, and the MLP that is tested is not the network the trigger was
  fitted to.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from attacks.backdoor import poison
from attacks.triggers import Trigger, clamp_to_range, pixel_range, random_trigger, white_trigger
from fedistill.augment import DSA, default_strategy
from fedistill.data import DatasetInfo, LabeledImages
from fedistill.distill._common import init_images, make_set, present_classes, sample_per_class
from fedistill.distill.dc import ChunkedGradients, get_loops, matching_loss, train_on_synthetic
from fedistill.distill.dm import real_target, synthetic_loss
from fedistill.errors import ConfigError
from fedistill.models import build_model
from fedistill.progress import progress_bar
from fedistill.synthetic import SyntheticSet

log = logging.getLogger(__name__)

LOOPS = ("dm", "dc")


@dataclass
class DoorpingConfig:
    """DOORPING's distillation loop and trigger update (see the module docstring).

    ``loop="dm"``: ``epochs × dm_iterations`` DM iterations, one trigger update before each.
    ``loop="dc"``: ``epochs`` outer iterations of DC (a fresh network each), with ``outer_loop``
    matching steps and ``inner_loop`` network epochs between them (None: DC's ``get_loops``),
    one trigger update after each inner loop. ``trigger_every`` thins the updates."""

    loop: str = "dm"
    epochs: int = 10  # DM: blocks of dm_iterations; DC: outer iterations (fresh networks)
    dm_iterations: int = 20
    lr_img: float | None = None  # None: DM 1.0, DC 0.1 (the methods' own)
    momentum: float = 0.5
    batch_real: int = 64
    init: str = "real"
    dsa: bool | None = None  # None: DM on (as DM), DC off (as DC)
    dsa_strategy: str | None = None
    model: str = "convnet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    outer_loop: int | None = None  # DC only
    inner_loop: int | None = None  # DC only
    lr_net: float = 0.01  # DC only
    batch_train: int = 256  # DC only
    # the trigger
    patch_size: int | None = 2  # the reference's 2×2 (None: triggers.default_patch_size)
    trigger_init: str = "random"  # "random" (Liu et al.) or "white" (BadNets' patch)
    topk: int = 1
    alpha: float = 10.0
    trigger_every: int = 1  # 1: after every outer loop, as in the reference code
    trigger_lr: float = 0.08
    trigger_steps: int = 1000  # at most; stops once the MSE is under the threshold
    cost_threshold: float = 0.005  # relative: MSE < cost_threshold × mean(goal²)
    trigger_input: str = "alone"  # "alone": on a black image (reference); "stamped": on images
    trigger_batch: int = 64  # images the "stamped" input averages over
    clamp: bool = False  # keep the pattern inside the valid pixel range (not in the reference)
    update_trigger: bool = True  # False: the random-trigger control (same loop, fixed patch)

    def validate(self) -> None:
        if self.loop not in LOOPS:
            raise ConfigError(f"loop must be one of {', '.join(LOOPS)}, got '{self.loop}'")
        if self.epochs < 1 or self.dm_iterations < 1 or self.trigger_every < 1:
            raise ConfigError("doorping needs epochs, dm_iterations and trigger_every ≥ 1")
        if self.init not in ("real", "noise"):
            raise ConfigError(f"init must be 'real' or 'noise', got '{self.init}'")
        if self.trigger_init not in ("random", "white"):
            raise ConfigError(
                f"trigger_init must be 'random' or 'white', got '{self.trigger_init}'"
            )
        if self.trigger_input not in ("alone", "stamped"):
            raise ConfigError(
                f"trigger_input must be 'alone' or 'stamped', got '{self.trigger_input}'"
            )
        if self.topk < 1 or self.trigger_steps < 0 or self.batch_real < 1:
            raise ConfigError("topk and batch_real must be ≥ 1, trigger_steps ≥ 0")
        if self.outer_loop is not None and self.outer_loop < 1:
            raise ConfigError(f"outer_loop must be ≥ 1, got {self.outer_loop}")
        if self.inner_loop is not None and self.inner_loop < 0:
            raise ConfigError(f"inner_loop must be ≥ 0, got {self.inner_loop}")
        if self.patch_size is not None and self.patch_size < 1:
            raise ConfigError(f"patch_size must be ≥ 1, got {self.patch_size}")
        for name in ("alpha", "trigger_lr", "lr_net", "cost_threshold"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {v}")
        if self.lr_img is not None and not self.lr_img > 0:
            raise ConfigError(f"lr_img must be > 0, got {self.lr_img}")

    def loops(self, ipc: int) -> tuple[int, int]:
        """DC's (outer, inner) schedule for ``ipc``."""
        outer, inner = get_loops(ipc)
        return (
            outer if self.outer_loop is None else self.outer_loop,
            inner if self.inner_loop is None else self.inner_loop,
        )

    @property
    def iterations(self) -> int:
        """DM iterations (``loop="dm"``) or DC outer iterations (``loop="dc"``)."""
        return self.epochs * self.dm_iterations if self.loop == "dm" else self.epochs

    def trigger_updates(self, ipc: int) -> int:
        """How many times the trigger is updated in a run."""
        if not self.update_trigger:
            return 0
        per = 1 if self.loop == "dm" else max(0, self.loops(ipc)[0] - 1)
        return (self.iterations * per) // self.trigger_every

    def use_dsa(self) -> bool:
        return self.loop == "dm" if self.dsa is None else self.dsa

    def image_lr(self) -> float:
        if self.lr_img is not None:
            return self.lr_img
        return 1.0 if self.loop == "dm" else 0.1


@dataclass
class DoorpingResult:
    syn: SyntheticSet
    trigger: Trigger  # the last one: the trigger used at test time
    initial_trigger: Trigger
    poisoned_indices: Tensor
    history: list[dict[str, float]]
    neurons: list[int] = field(default_factory=list)  # the units of the last update
    updates: int = 0

    @property
    def trigger_change(self) -> float:
        """Mean absolute change of the patch's pixels (normalised units)."""
        return float(
            (self.trigger.patch_values() - self.initial_trigger.patch_values()).abs().mean()
        )


# --------------------------------------------------------------------------- the update


def select_neurons(model: nn.Module, topk: int) -> Tensor:
    """The ``topk`` penultimate-layer units (the classifier's inputs) with the largest total
    connection strength Σ_out |W_out,j| into the classifier."""
    weight = model.classifier.weight.detach().abs().sum(0)
    return weight.topk(min(topk, len(weight))).indices


def black_image(info: DatasetInfo) -> Tensor:
    """C×H×W of pixel value 0 in the normalised space (the reference's trigger background)."""
    lo, _hi = pixel_range(info)
    return lo.expand(info.channels, info.height, info.width).clone()


def update_trigger_neurons(
    trigger: Trigger,
    model: nn.Module,
    info: DatasetInfo,
    *,
    topk: int = 1,
    alpha: float = 10.0,
    lr: float = 0.08,
    steps: int = 1000,
    cost_threshold: float = 0.005,
    clamp: bool = False,
    background: Tensor | None = None,
    device: str | torch.device = "cpu",
) -> tuple[Trigger, dict[str, Any]]:
    """DOORPING's trigger update (``update_trigger`` in ``liuyugeng/baadd``).

    Select the units (:func:`select_neurons`), feed the trigger image (the pattern inside its
    mask on a black image, or stamped on ``background``: N×C×H×W, mean activation), and move
    the pattern with Adam (gradient masked to the patch) so the units reach ``alpha`` × their
    activation at the first step (MSE), at most ``steps`` steps, stopping once the MSE is under
    ``cost_threshold`` × mean(goal²). ``clamp`` keeps the pattern inside the valid pixel range
    after every step (the reference does not). The model's parameters are left untouched."""
    device = torch.device(device)
    was_training = model.training
    model = model.to(device).eval()
    flags = [p.requires_grad for p in model.parameters()]
    for prm in model.parameters():
        prm.requires_grad_(False)
    units = select_neurons(model, topk).to(device)
    mask = trigger.mask.to(device)
    base = (black_image(info).unsqueeze(0) if background is None else background).to(device)
    pattern = trigger.pattern.clone().to(device).requires_grad_(True)
    opt = torch.optim.Adam([pattern], lr=lr, betas=(0.9, 0.99))
    goal: Tensor | None = None
    first = last = loss_value = float("nan")
    taken = 0
    for _ in range(steps):
        act = model.embed(base * (1 - mask) + pattern * mask)[:, units].mean(0, keepdim=True)
        if goal is None:
            first = float(act.detach().mean())
            goal = alpha * act.detach().clamp_min(1e-2)
        loss = nn.functional.mse_loss(act, goal)
        loss_value, last = float(loss.detach()), float(act.detach().mean())
        if loss_value < cost_threshold * float(goal.pow(2).mean()):
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        pattern.grad.mul_(mask)
        opt.step()
        taken += 1
        with torch.no_grad():
            pattern.copy_((clamp_to_range(pattern, info) if clamp else pattern) * mask)
    for prm, flag in zip(model.parameters(), flags, strict=True):
        prm.requires_grad_(flag)
    model.train(was_training)
    info_out = {
        "neurons": units.tolist(),
        "activation_before": first,
        "activation": last,
        "mse": loss_value,
        "steps": taken,
    }
    return Trigger(pattern.detach().cpu(), trigger.mask.clone()), info_out


# --------------------------------------------------------------------------- the loops


class _Poisoned:
    """The poisoned training data and the trigger update that re-stamps it."""

    def __init__(
        self,
        real: LabeledImages,
        trigger: Trigger,
        p: float,
        target: int,
        cfg: DoorpingConfig,
        seed: int,
        gen: torch.Generator,
        device: torch.device,
    ) -> None:
        n = math.floor(p * len(real))
        indices = torch.randperm(len(real), generator=gen)[:n]
        self.data, self.indices = poison(real, trigger, p, target, indices=indices)
        self.originals = real.images[self.indices].clone()
        self.trigger, self.cfg, self.gen, self.device = trigger, cfg, gen, device
        non_target = real.images[real.labels != target]
        self.non_target = non_target if len(non_target) else real.images
        self.updating = cfg.update_trigger and len(self.indices) > 0
        self.count = 0  # calls
        self.updates = 0  # updates made
        self.neurons: list[int] = []

    def update(self, net: nn.Module) -> dict[str, Any]:
        """τ ← UPDATE(τ, net) and re-stamp the poisoned images (every ``trigger_every``-th
        call); returns the update's facts (empty when it was skipped)."""
        self.count += 1
        if not self.updating or self.count % self.cfg.trigger_every:
            return {}
        cfg = self.cfg
        background = None
        if cfg.trigger_input == "stamped":
            pick = torch.randperm(len(self.non_target), generator=self.gen)[: cfg.trigger_batch]
            background = self.non_target[pick]
        self.trigger, upd = update_trigger_neurons(
            self.trigger,
            net,
            self.data.info,
            topk=cfg.topk,
            alpha=cfg.alpha,
            lr=cfg.trigger_lr,
            steps=cfg.trigger_steps,
            cost_threshold=cfg.cost_threshold,
            clamp=cfg.clamp,
            background=background,
            device=self.device,
        )
        self.data.images[self.indices] = self.trigger.stamp(self.originals).detach()
        self.neurons = upd["neurons"]
        self.updates += 1
        return upd


def _network(cfg: DoorpingConfig, info: DatasetInfo, device: torch.device) -> nn.Module:
    kwargs = dict(cfg.model_kwargs)
    if cfg.model == "convnet" and "depth" not in kwargs and min(info.height, info.width) < 16:
        kwargs["depth"] = 2  # as DM and DC on 8×8 images (see their net_depth)
    return build_model(cfg.model, info, **kwargs).to(device)


def _dm_loop(
    pois: _Poisoned,
    syn: Tensor,
    opt: torch.optim.Optimizer,
    classes: list[int],
    augment: DSA | None,
    bar: Any,
) -> list[dict[str, Any]]:
    cfg, data, gen = pois.cfg, pois.data, pois.gen
    history = []
    for it in range(cfg.iterations):
        net = _network(cfg, data.info, syn.device).train()  # ψ: fresh, random, never trained
        for prm in net.parameters():
            prm.requires_grad_(False)
        row: dict[str, Any] = {"iteration": it, **pois.update(net)}
        x_real = data.images[sample_per_class(data, cfg.batch_real, gen, classes)]
        seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
        target = real_target(
            net, x_real.to(syn.device), len(classes), augment=augment, seed=seed, fast=False
        )
        loss = synthetic_loss(target, syn, len(classes), augment)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        row["loss"] = float(loss.detach())
        history.append(row)
        bar.advance(loss=row["loss"])
    return history


def _dc_loop(
    pois: _Poisoned,
    syn: Tensor,
    labels: Tensor,
    opt: torch.optim.Optimizer,
    classes: list[int],
    augment: DSA | None,
    ipc: int,
    bar: Any,
) -> list[dict[str, Any]]:
    cfg, data, gen = pois.cfg, pois.data, pois.gen
    outer, inner = cfg.loops(ipc)
    grads = ChunkedGradients()
    history = []
    for it in range(cfg.iterations):
        net = _network(cfg, data.info, syn.device).train()  # θ: fresh, trained on S
        opt_net = torch.optim.SGD(net.parameters(), lr=cfg.lr_net)
        loss_sum, row = 0.0, {"iteration": it}
        for t in range(outer):
            loss = matching_loss(
                net, data, syn, labels, classes, ipc, cfg.batch_real, gen, augment, grads
            )
            (grad,) = torch.autograd.grad(loss, [syn])
            syn.grad = grad
            opt.step()
            loss_sum += float(loss.detach())
            if t == outer - 1:
                break
            train_on_synthetic(
                net, opt_net, syn.detach(), labels, inner, cfg.batch_train, gen, augment, grads
            )
            row.update(pois.update(net))
        row["loss"] = loss_sum / (len(classes) * outer)
        history.append(row)
        bar.advance(match=row["loss"])
    return history


def doorping(
    real: LabeledImages,
    ipc: int,
    *,
    p: float,
    target: int,
    config: DoorpingConfig | None = None,
    trigger: Trigger | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> DoorpingResult:
    """DOORPING: distill ``real`` by DM or DC (``config.loop``) while the trigger is
    re-optimised inside the outer loop (the module docstring's algorithm).

    ``⌊p·|D|⌋`` random images of any class get the trigger and the ``target`` label; they are
    re-stamped after every trigger update. With ``config.update_trigger=False`` this is a
    control: the same loop and poisoned images with the initial patch (random, or white with
    ``trigger_init="white"``) never moved. Returns the set and the last trigger."""
    cfg = config or DoorpingConfig()
    cfg.validate()
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"poison fraction p must be in [0, 1], got {p}")
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    info = real.info
    if trigger is not None:
        trigger = trigger.clone()
    elif cfg.trigger_init == "white":
        trigger = white_trigger(info, cfg.patch_size)
    else:
        trigger = random_trigger(info, gen, cfg.patch_size)
    initial = trigger.clone()
    pois = _Poisoned(real, trigger, p, target, cfg, seed, gen, device)
    classes = present_classes(pois.data)
    images, labels = init_images(pois.data, ipc, cfg.init, gen)
    syn = images.to(device).requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=cfg.image_lr(), momentum=cfg.momentum)
    augment = DSA(cfg.dsa_strategy or default_strategy(info)) if cfg.use_dsa() else None
    with progress_bar(f"doorping-{cfg.loop}", cfg.iterations, progress) as bar:
        if cfg.loop == "dm":
            history = _dm_loop(pois, syn, opt, classes, augment, bar)
        else:
            y = labels.to(device)
            history = _dc_loop(pois, syn, y, opt, classes, augment, ipc, bar)
    result = DoorpingResult(
        make_set(
            syn.detach(),
            labels,
            real,
            method=f"doorping-{cfg.loop}",
            ipc=ipc,
            seed=seed,
            iterations=cfg.iterations,
            config=cfg,
        ),
        pois.trigger,
        initial,
        pois.indices,
        history,
        pois.neurons,
        updates=pois.updates,
    )
    log.info(
        "doorping-%s: %d iterations, %d trigger updates, trigger change %.3f",
        cfg.loop,
        cfg.iterations,
        result.updates,
        result.trigger_change,
    )
    return result
