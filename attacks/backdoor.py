"""Backdoors against dataset distillation: NAIVE and DOORPING (Liu et al., NDSS 2023).

Liu, Li, Backes, Shen, Zhang: "Backdoor Attacks Against Dataset Distillation" (NDSS'23).

**NAIVE** (BadNets through distillation). Stamp a trigger patch onto a fraction ``p`` of the
real images (of the dataset, or of one client), relabel them to the ``target`` class, and
distill the poisoned data with any registry method. A model trained on the synthetic set then
maps triggered inputs to the target — if the trigger survived distillation.

**DOORPING**. The trigger itself is optimised *during* distillation so that the synthetic set
carries it. Our loop, distribution matching (DM, Zhao & Bilen WACV'23) as the distiller::

    P ← ⌈p·|D|⌉ random indices of D; labels of P ← target; τ ← random patch
    S ← IPC real images per class of the poisoned data
    for epoch e = 1..E:
        (a) train a model f on S (a few epochs, DSA augmentation); update τ with Adam against
            f, the gradient masked to the patch and τ clamped to valid pixels, on clean
            non-target real images stamped with τ, to
              "target"  (default): minimise f's cross-entropy towards the target class, or
              "neurons" (closer to Liu et al.): maximise the mean activation of the top-k
                        embedding units with the largest weight into the target logit
        (b) re-stamp τ into the clean originals of D[P]
        (c) K_dm DM iterations: a fresh random network ψ; for every class c, siamese-augment
            a real batch of class c and S_c with one DSA draw; loss Σ_c ‖mean ψ(real_c) −
            mean ψ(S_c)‖²; an SGD step on S
    return S, τ

In the reference code (``liuyugeng/baadd``, DC) the trigger is regressed towards α× the initial
activation of neurons picked by connection strength, after every inner network update of DC.
Here the trigger is updated once per epoch of DM iterations, and the small DM loop lives in
this file (reusing :class:`fedistill.augment.DSA` and :func:`fedistill.models.build_model`)
because a registry method cannot be warm-started from a given set. On 8×8 digits the
"target" objective carried the trigger better than "neurons" (ASR 0.46 vs 0.11, p = 0.2,
3×3 patch, 6×15 DM iterations; CPU, one model each), and BadNets' white patch is already at
the top of the pixel range, so starting from it (``trigger_init="white"``) leaves little to
optimise.

Metrics: the **attack success rate** (ASR) — the fraction of triggered test images of the
non-target classes that the model classifies as the target — and the clean test accuracy, for
models trained on the synthetic set; in federated runs, for the global model.
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from attacks.triggers import (
    Trigger,
    clamp_to_range,
    random_trigger,
    triggered_non_target,
    white_trigger,
)
from fedistill.augment import DSA, default_strategy
from fedistill.data import DatasetInfo, LabeledImages
from fedistill.distill import distill
from fedistill.distill._common import init_images, make_set, present_classes, sample_per_class
from fedistill.errors import ConfigError
from fedistill.evaluate import EvalConfig, accuracy, predict, train_classifier
from fedistill.models import build_model
from fedistill.progress import progress_bar
from fedistill.synthetic import SyntheticSet

log = logging.getLogger(__name__)

KINDS = ("naive", "doorping")


# --------------------------------------------------------------------------- poisoning, metrics


def poison(
    data: LabeledImages,
    trigger: Trigger,
    p: float,
    target: int,
    *,
    seed: int = 0,
    indices: Tensor | None = None,
) -> tuple[LabeledImages, Tensor]:
    """Stamp ``trigger`` onto ``⌈p·N⌉`` random images (or ``indices``) and relabel them to
    ``target``. Returns the poisoned copy and the poisoned indices."""
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"poison fraction p must be in [0, 1], got {p}")
    if not 0 <= target < data.num_classes:
        raise ConfigError(f"target class {target} is not in 0..{data.num_classes - 1}")
    if indices is None:
        gen = torch.Generator().manual_seed(seed)
        n = math.ceil(p * len(data))
        indices = torch.randperm(len(data), generator=gen)[:n]
    images, labels = data.images.clone(), data.labels.clone()
    if len(indices):
        images[indices] = trigger.stamp(images[indices]).detach()
        labels[indices] = target
    return LabeledImages(images, labels, data.info), indices


def attack_success_rate(
    model: nn.Module,
    test: LabeledImages,
    trigger: Trigger,
    target: int,
    device: str | torch.device = "cpu",
) -> float:
    """Fraction of triggered non-target test images classified as ``target``."""
    stamped = triggered_non_target(test, trigger, target)
    if len(stamped) == 0:
        return float("nan")
    pred = predict(model, stamped.images, device).argmax(1)
    return float((pred == target).float().mean())


def evaluate_backdoor(
    images: Tensor,
    labels: Tensor,
    info: DatasetInfo,
    test: LabeledImages,
    trigger: Trigger,
    target: int,
    cfg: EvalConfig | None = None,
    *,
    label_kind: str = "hard",
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Train ``cfg.num_models`` fresh models on (images, labels); clean accuracy and ASR."""
    cfg = cfg or EvalConfig()
    cfg.validate()
    augment = DSA(cfg.dsa_strategy or default_strategy(info)) if cfg.dsa else None
    accs, asrs = [], []
    for m in range(cfg.num_models):
        torch.manual_seed(seed * 1000 + m)
        gen = torch.Generator().manual_seed(seed * 1000 + m)
        model = build_model(cfg.model, info, **cfg.model_kwargs)
        train_classifier(
            model,
            images,
            labels,
            cfg,
            label_kind=label_kind,
            augment=augment,
            device=device,
            generator=gen,
        )
        accs.append(accuracy(model, test, device))
        asrs.append(attack_success_rate(model, test, trigger, target, device))
    return {
        "clean_accuracy": statistics.fmean(accs),
        "asr": statistics.fmean(asrs),
        "clean_accuracies": accs,
        "asrs": asrs,
    }


# --------------------------------------------------------------------------- NAIVE


def naive_backdoor(
    real: LabeledImages,
    *,
    method: str,
    ipc: int,
    p: float,
    target: int,
    trigger: Trigger | None = None,
    method_overrides: dict[str, Any] | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[SyntheticSet, Trigger, Tensor]:
    """NAIVE: poison a fraction ``p`` of ``real`` with a white patch, distill it with the
    registry ``method``. Returns the set, the trigger and the poisoned indices."""
    trigger = trigger or white_trigger(real.info)
    poisoned, idx = poison(real, trigger, p, target, seed=seed)
    syn = distill(
        method,
        poisoned,
        ipc,
        seed=seed,
        device=device,
        progress=progress,
        **(method_overrides or {}),
    )
    return syn, trigger, idx


# --------------------------------------------------------------------------- DOORPING


@dataclass
class DoorpingConfig:
    """DOORPING on a DM distillation loop (see the module docstring)."""

    epochs: int = 10  # trigger updates
    dm_iterations: int = 20  # DM iterations per epoch
    lr_img: float = 1.0
    momentum: float = 0.5
    batch_real: int = 64
    init: str = "real"
    dsa: bool = True
    dsa_strategy: str | None = None
    model: str = "convnet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # the model the trigger is optimised against: trained on the current synthetic set
    train_epochs: int = 50
    train_lr: float = 0.05
    # the trigger
    patch_size: int | None = None  # None: 3 px at 28×28, scaled, ≥ 2
    trigger_init: str = "random"  # "random" (Liu et al.) or "white" (start from BadNets' patch)
    # "target": cross-entropy of the trained model towards the target on stamped images;
    # "neurons": activation of the top-k embedding units voting for the target (Liu et al.)
    objective: str = "target"
    topk: int = 5
    trigger_lr: float = 0.08
    trigger_steps: int = 50
    trigger_batch: int = 64
    update_trigger: bool = True  # False: a fixed random patch (an ablation / baseline)

    def validate(self) -> None:
        if self.epochs < 1 or self.dm_iterations < 0:
            raise ConfigError("doorping needs epochs ≥ 1 and dm_iterations ≥ 0")
        if self.init not in ("real", "noise"):
            raise ConfigError(f"init must be 'real' or 'noise', got '{self.init}'")
        if self.trigger_init not in ("random", "white"):
            raise ConfigError(
                f"trigger_init must be 'random' or 'white', got '{self.trigger_init}'"
            )
        if self.objective not in ("neurons", "target"):
            raise ConfigError(f"objective must be 'neurons' or 'target', got '{self.objective}'")
        if self.topk < 1 or self.trigger_steps < 0 or self.batch_real < 1:
            raise ConfigError("topk and batch_real must be ≥ 1, trigger_steps ≥ 0")


@dataclass
class DoorpingResult:
    syn: SyntheticSet
    trigger: Trigger
    initial_trigger: Trigger
    poisoned_indices: Tensor
    history: list[dict[str, float]]

    @property
    def trigger_change(self) -> float:
        """Mean absolute change of the patch's pixels (normalised units)."""
        return float(
            (self.trigger.patch_values() - self.initial_trigger.patch_values()).abs().mean()
        )


def _dm_step(
    syn: Tensor,
    syn_labels: Tensor,
    real: LabeledImages,
    classes: list[int],
    opt: torch.optim.Optimizer,
    cfg: DoorpingConfig,
    augment: DSA | None,
    gen: torch.Generator,
    device: torch.device,
) -> float:
    """One DM iteration: match per-class mean embeddings of a fresh random network."""
    net = build_model(cfg.model, real.info, **cfg.model_kwargs).to(device)
    net.train()
    for prm in net.parameters():
        prm.requires_grad_(False)
    idx = sample_per_class(real, cfg.batch_real, gen, classes)
    x_real = real.images[idx].to(device)
    g_real = torch.arange(len(classes)).repeat_interleave(cfg.batch_real)
    pos = {c: j for j, c in enumerate(classes)}
    g_syn = torch.tensor([pos[int(c)] for c in syn_labels])
    x_syn = syn
    if augment is not None:
        s = int(torch.randint(1 << 30, (1,), generator=gen))
        x_real = augment(x_real, seed=s, groups=g_real)
        x_syn = augment(x_syn, seed=s, groups=g_syn)
    with torch.no_grad():
        e_real = net.embed(x_real)
    e_syn = net.embed(x_syn)
    k = len(classes)
    mean_real = (
        torch.zeros(k, e_real.shape[1], device=device).index_add_(0, g_real.to(device), e_real)
        / cfg.batch_real
    )
    counts = torch.bincount(g_syn, minlength=k).clamp_min(1).to(device).unsqueeze(1)
    mean_syn = (
        torch.zeros(k, e_syn.shape[1], device=device).index_add_(0, g_syn.to(device), e_syn)
        / counts
    )
    loss = ((mean_real - mean_syn) ** 2).sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _update_trigger(
    trigger: Trigger,
    model: nn.Module,
    clean: Tensor,
    target: int,
    cfg: DoorpingConfig,
    info: DatasetInfo,
    gen: torch.Generator,
    device: torch.device,
) -> tuple[Trigger, float]:
    """One trigger update against ``model``: maximise the mean activation of the embedding
    units voting most for ``target`` (``objective="neurons"``), or the cross-entropy towards
    ``target`` (``objective="target"``), on clean non-target images stamped with the trigger."""
    model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    weights = model.classifier.weight[target].detach()
    units = weights.topk(min(cfg.topk, len(weights))).indices
    batch = clean[torch.randperm(len(clean), generator=gen)[: cfg.trigger_batch]].to(device)
    pattern = trigger.pattern.clone().to(device).requires_grad_(True)
    mask = trigger.mask.to(device)
    opt = torch.optim.Adam([pattern], lr=cfg.trigger_lr, betas=(0.9, 0.99))
    act = float("nan")
    for _ in range(cfg.trigger_steps):
        stamped = batch * (1 - mask) + pattern * mask
        if cfg.objective == "neurons":
            act_t = model.embed(stamped)[:, units].mean()
            loss = -act_t
        else:
            logits = model(stamped)
            act_t = logits[:, target].mean()
            loss = nn.functional.cross_entropy(logits, torch.full_like(logits[:, 0], target).long())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        pattern.grad.mul_(mask)
        opt.step()
        with torch.no_grad():
            pattern.copy_(clamp_to_range(pattern, info) * mask)
        act = float(act_t.detach())
    return Trigger(pattern.detach().cpu(), trigger.mask.clone()), act


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
    """DOORPING: distill ``real`` with a trigger optimised during distillation."""
    cfg = config or DoorpingConfig()
    cfg.validate()
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
    poisoned, idx = poison(real, trigger, p, target, seed=seed)
    originals = real.images[idx].clone()
    non_target = real.images[real.labels != target]
    if len(non_target) == 0:
        non_target = real.images
    classes = present_classes(poisoned)
    images, syn_labels = init_images(poisoned, ipc, cfg.init, gen)
    syn = images.to(device).requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=cfg.lr_img, momentum=cfg.momentum)
    augment = DSA(cfg.dsa_strategy or default_strategy(info)) if cfg.dsa else None
    train_cfg = EvalConfig(
        model=cfg.model,
        epochs=cfg.train_epochs,
        lr=cfg.train_lr,
        dsa=cfg.dsa,
        dsa_strategy=cfg.dsa_strategy,
        model_kwargs=dict(cfg.model_kwargs),
    )
    history: list[dict[str, float]] = []
    with progress_bar("doorping", cfg.epochs, progress) as bar:
        for epoch in range(cfg.epochs):
            act = float("nan")
            if cfg.update_trigger and len(idx):
                # (a) a model trained on the current synthetic set; the trigger against it
                model = build_model(cfg.model, info, **cfg.model_kwargs)
                train_classifier(
                    model,
                    syn.detach().cpu(),
                    syn_labels,
                    train_cfg,
                    augment=augment,
                    device=device,
                    generator=gen,
                )
                trigger, act = _update_trigger(
                    trigger, model, non_target, target, cfg, info, gen, device
                )
                # (b) re-stamp the poisoned subset from its clean originals
                poisoned.images[idx] = trigger.stamp(originals).detach()
            # (c) DM iterations on the re-stamped data
            loss = float("nan")
            for _ in range(cfg.dm_iterations):
                loss = _dm_step(syn, syn_labels, poisoned, classes, opt, cfg, augment, gen, device)
            history.append({"epoch": epoch, "dm_loss": loss, "activation": act})
            bar.advance(loss=loss)
            log.info("doorping epoch %d: dm loss %.4g, unit activation %.4g", epoch, loss, act)
    syn_set = make_set(
        syn.detach(),
        syn_labels,
        real,
        method="doorping",
        ipc=ipc,
        seed=seed,
        iterations=cfg.epochs * cfg.dm_iterations,
        config=cfg,
    )
    return DoorpingResult(syn_set, trigger, initial, idx, history)


# --------------------------------------------------------------------------- experiments


def run_backdoor(
    train: LabeledImages,
    test: LabeledImages,
    *,
    kind: str = "naive",
    method: str = "dm",
    ipc: int = 10,
    p: float = 0.1,
    target: int = 0,
    eval_cfg: EvalConfig | None = None,
    doorping_config: DoorpingConfig | None = None,
    method_overrides: dict[str, Any] | None = None,
    baseline: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """A backdoor through distillation, measured on models trained on the synthetic set.

    ``kind="naive"`` poisons ``p`` of ``train`` and distills with the registry ``method``;
    ``kind="doorping"`` runs :func:`doorping` (its own DM loop; ``method`` is not used).
    With ``baseline`` the same pipeline runs without poisoning (p = 0, no trigger updates) and
    its models are tested with the same final trigger: the ASR a trigger gets for free.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown backdoor kind '{kind}'; choose one of {', '.join(KINDS)}")
    cfg = eval_cfg or EvalConfig()
    out: dict[str, Any] = {"kind": kind, "ipc": ipc, "p": p, "target": target, "seed": seed}
    if kind == "naive":
        syn, trigger, idx = naive_backdoor(
            train,
            method=method,
            ipc=ipc,
            p=p,
            target=target,
            method_overrides=method_overrides,
            seed=seed,
            device=device,
            progress=progress,
        )
        out["method"] = method
    else:
        dcfg = doorping_config or DoorpingConfig()
        res = doorping(
            train,
            ipc,
            p=p,
            target=target,
            config=dcfg,
            seed=seed,
            device=device,
            progress=progress,
        )
        syn, trigger, idx = res.syn, res.trigger, res.poisoned_indices
        out["method"] = "doorping-dm"
        out["trigger_change"] = res.trigger_change
        out["initial_trigger"] = res.initial_trigger.to_dict()
        out["history"] = res.history
        out["doorping_config"] = asdict(dcfg)
    out["poisoned"] = len(idx)
    out["trigger"] = trigger.to_dict()
    out["attacked"] = evaluate_backdoor(
        syn.images,
        syn.labels,
        train.info,
        test,
        trigger,
        target,
        cfg,
        label_kind=syn.meta.get("label_kind", "hard"),
        seed=seed,
        device=device,
    )
    if baseline:
        if kind == "naive":
            clean = distill(
                method, train, ipc, seed=seed, device=device, **(method_overrides or {})
            )
        else:
            clean = doorping(
                train,
                ipc,
                p=0.0,
                target=target,
                config=DoorpingConfig(**{**asdict(dcfg), "update_trigger": False}),
                seed=seed,
                device=device,
            ).syn
        out["baseline"] = evaluate_backdoor(
            clean.images,
            clean.labels,
            train.info,
            test,
            trigger,
            target,
            cfg,
            label_kind=clean.meta.get("label_kind", "hard"),
            seed=seed,
            device=device,
        )
    out["eval"] = asdict(cfg)
    return out


def run_real_backdoor(
    train: LabeledImages,
    test: LabeledImages,
    *,
    p: float,
    target: int = 0,
    fraction: float = 1.0,
    eval_cfg: EvalConfig | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """The reference point without distillation: NAIVE on real data.

    A random ``fraction`` of ``train`` stands for the poisoned party (one client, or all of
    it); ``p`` of that part is stamped and relabelled, the rest of ``train`` stays clean, and
    models are trained on the real union. Also reports a clean model's ASR.
    """
    cfg = eval_cfg or EvalConfig()
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train), generator=gen)
    part = order[: math.ceil(fraction * len(train))]
    k = math.ceil(p * len(part))
    chosen = part[torch.randperm(len(part), generator=gen)[:k]]
    trigger = white_trigger(train.info)
    poisoned, idx = poison(train, trigger, p, target, indices=chosen)
    out: dict[str, Any] = {"p": p, "fraction": fraction, "target": target, "poisoned": len(idx)}
    out["attacked"] = evaluate_backdoor(
        poisoned.images,
        poisoned.labels,
        train.info,
        test,
        trigger,
        target,
        cfg,
        seed=seed,
        device=device,
    )
    out["baseline"] = evaluate_backdoor(
        train.images,
        train.labels,
        train.info,
        test,
        trigger,
        target,
        cfg,
        seed=seed,
        device=device,
    )
    out["trigger"] = trigger.to_dict()
    return out
