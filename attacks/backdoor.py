"""Backdoors against dataset distillation: NAIVE and DOORPING (Liu et al., NDSS 2023).

Liu, Li, Backes, Shen, Zhang: "Backdoor Attacks Against Dataset Distillation" (NDSS'23).

**NAIVE** (BadNets through distillation). Stamp a trigger patch onto a fraction ``p`` of the
real images (of the dataset, or of one client), relabel them to the ``target`` class, and
distill the poisoned data with any registry method. A model trained on the synthetic set then
maps triggered inputs to the target — if the trigger survived distillation.

**DOORPING** optimises the trigger during distillation (:mod:`attacks.doorping`);
:func:`run_backdoor` runs it beside its controls.

Metrics (:func:`evaluate_backdoor`, :func:`summarise_models`): the **attack success rate**
(ASR) — the fraction of triggered test images of the non-target classes that the model
classifies as the target — beside the *same* model's **clean target-class rate** (clean
non-target images classified as the target: a model that says "target" to everything has ASR
1.0 and means nothing) and its clean accuracy, each as mean ± std over ≥ 3 final-model seeds;
the clean pipeline's ASR with the same trigger is the control.
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from attacks.triggers import Trigger, triggered_non_target, white_trigger
from fedistill.augment import DSA, default_strategy
from fedistill.data import DatasetInfo, LabeledImages
from fedistill.distill import distill
from fedistill.errors import ConfigError
from fedistill.evaluate import EvalConfig, accuracy, predict, train_classifier
from fedistill.factorised import decode
from fedistill.models import build_model
from fedistill.synthetic import SyntheticSet

if TYPE_CHECKING:
    from attacks.doorping import DoorpingConfig

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


def clean_target_rate(
    model: nn.Module, test: LabeledImages, target: int, device: str | torch.device = "cpu"
) -> float:
    """Fraction of *clean* non-target test images the model classifies as ``target``: what the
    ASR would be if the trigger did nothing. An ASR means something only well above this."""
    keep = test.labels != target
    if not keep.any():
        return float("nan")
    pred = predict(model, test.images[keep], device).argmax(1)
    return float((pred == target).float().mean())


def backdoor_metrics(
    model: nn.Module,
    test: LabeledImages,
    trigger: Trigger,
    target: int,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """One model's three figures: ASR, clean target-class rate, clean accuracy."""
    return {
        "asr": attack_success_rate(model, test, trigger, target, device),
        "clean_target_rate": clean_target_rate(model, test, target, device),
        "clean_accuracy": accuracy(model, test, device),
    }


def summarise_models(rows: list[dict[str, float]], seeds: list[int]) -> dict[str, Any]:
    """Mean and std (sample std; 0 for one model) of each figure over the final models, with
    the per-model values and seeds: ``asr``, ``asr_std``, ``asrs``, ``clean_target_rate``,
    ``clean_target_rate_std``, ``clean_target_rates``, ``clean_accuracy``,
    ``clean_accuracy_std``, ``clean_accuracies``, ``num_models``, ``model_seeds``, and
    ``asr_above_clean`` (ASR − clean target rate, per model, averaged)."""
    out: dict[str, Any] = {"num_models": len(rows), "model_seeds": list(seeds)}
    for key, plural in (
        ("asr", "asrs"),
        ("clean_target_rate", "clean_target_rates"),
        ("clean_accuracy", "clean_accuracies"),
    ):
        vals = [r[key] for r in rows]
        out[key] = statistics.fmean(vals)
        out[f"{key}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out[plural] = vals
    out["asr_above_clean"] = statistics.fmean(r["asr"] - r["clean_target_rate"] for r in rows)
    return out


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
    """Train ``cfg.num_models`` fresh models (seeds ``seed·1000 + m``) on (images, labels);
    for each the ASR, the clean target-class rate and the clean accuracy of that *same* model;
    mean ± std over the models (:func:`summarise_models`). Use ``num_models ≥ 3``: single-seed
    ASR cells vary by ±10 points."""
    cfg = cfg or EvalConfig()
    cfg.validate()
    if cfg.num_models < 3:
        log.warning("backdoor evaluated with %d model(s); use ≥ 3 for a std", cfg.num_models)
    augment = DSA(cfg.dsa_strategy or default_strategy(info)) if cfg.dsa else None
    rows, seeds = [], []
    for m in range(cfg.num_models):
        s = seed * 1000 + m
        torch.manual_seed(s)
        gen = torch.Generator().manual_seed(s)
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
        rows.append(backdoor_metrics(model, test, trigger, target, device))
        seeds.append(s)
    return summarise_models(rows, seeds)


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
    return decode(syn), trigger, idx  # a factorised set: what it decodes to


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
    controls: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """A backdoor through distillation, measured on models trained on the synthetic set.

    ``kind="naive"`` poisons ``p`` of ``train`` and distills with the registry ``method``;
    ``kind="doorping"`` runs :func:`attacks.doorping.doorping` (its own DM or DC loop,
    ``doorping_config.loop``; ``method`` is not used).
    With ``baseline`` the same pipeline runs without poisoning (p = 0, no trigger updates) and
    its models are tested with the same final trigger: the ASR a trigger gets for free (the
    clean pipeline's ASR, the control). With ``controls`` (DOORPING only) two more sets come
    from the same loop at the same ``p``: ``random_trigger`` (the initial random patch, never
    optimised) and ``naive`` (BadNets' white patch), each tested with its own trigger.

    Every evaluated entry (``attacked``, ``baseline``, ``random_trigger``, ``naive``) holds
    :func:`summarise_models`' keys: ``asr``/``asr_std``, ``clean_target_rate``/``_std`` (the
    same models on clean non-target images) and ``clean_accuracy``/``_std``, over
    ``eval_cfg.num_models`` final-model seeds.
    """
    from attacks.doorping import DoorpingConfig, doorping  # doorping imports this module

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
        out["method"] = f"doorping-{dcfg.loop}"
        out["trigger_change"] = res.trigger_change
        out["initial_trigger"] = res.initial_trigger.to_dict()
        out["trigger_updates"] = res.updates
        out["neurons"] = res.neurons
        out["history"] = _thin(res.history)
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
            clean = decode(
                distill(method, train, ipc, seed=seed, device=device, **(method_overrides or {}))
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
    if kind == "doorping" and controls:
        # the random-trigger control: the same loop and poisoned images, the patch never moved
        ctrl = doorping(
            train,
            ipc,
            p=p,
            target=target,
            config=DoorpingConfig(**{**asdict(dcfg), "update_trigger": False}),
            seed=seed,
            device=device,
        )
        out["random_trigger"] = evaluate_backdoor(
            ctrl.syn.images,
            ctrl.syn.labels,
            train.info,
            test,
            ctrl.trigger,
            target,
            cfg,
            seed=seed,
            device=device,
        )
        out["random_trigger"]["trigger"] = ctrl.trigger.to_dict()
        # NAIVE in the same loop: BadNets' white patch, never moved
        naive = doorping(
            train,
            ipc,
            p=p,
            target=target,
            config=DoorpingConfig(
                **{**asdict(dcfg), "update_trigger": False, "trigger_init": "white"}
            ),
            seed=seed,
            device=device,
        )
        out["naive"] = evaluate_backdoor(
            naive.syn.images,
            naive.syn.labels,
            train.info,
            test,
            naive.trigger,
            target,
            cfg,
            seed=seed,
            device=device,
        )
        out["naive"]["trigger"] = naive.trigger.to_dict()
    out["eval"] = asdict(cfg)
    return out


def _thin(history: list[dict[str, Any]], keep: int = 50) -> list[dict[str, Any]]:
    """At most ``keep`` evenly spaced rows of a per-iteration history (and the last)."""
    if len(history) <= keep:
        return history
    step = math.ceil(len(history) / keep)
    rows = history[::step]
    return rows if rows[-1] is history[-1] else [*rows, history[-1]]


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
