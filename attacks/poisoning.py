"""Poisoning a FedDM federation, with and without the server's robust filter.

``m`` of ``n`` clients are malicious. They attack either the data they distill
(``data_tamper``) or the synthetic set they upload (``set_tamper``):

* ``label_flip`` — the client's real labels become ``K − 1 − y`` before it distills honestly;
* ``set_flip`` — the uploaded set's labels are shifted, ``y → (y + 1) mod K``;
* ``noise`` — the uploaded images are replaced by standard normal noise (out of distribution);
* ``scale`` — the uploaded images are multiplied by ``scale`` (default 10);
* ``pull`` — a set crafted to pull the pooled model's decision: ``ipc`` real images of a
  ``source`` class, all labelled ``target`` (within the server's per-class cap).

Adaptive attackers (each with a strength, so the defence is measured as a curve):

* ``rotate`` — partial label rotation: the labels of ``k`` of the ``K`` classes are rotated
  among themselves (``c₁ → c₂ → … → c_k → c₁``), the other classes stay honest;
* ``hidden_pull`` — ``hide`` pull images (source-class real images labelled ``target``)
  replace that many of the honest set's target-class images; the rest of the set is honest;
* ``backdoor`` — NAIVE at a low rate: the client stamps BadNets' white patch onto ``p_backdoor``
  of its real images, relabels them ``target`` and distills honestly (measured by ASR);
* ``scale`` with a small ``scale`` — value-scaled sets just above the honest spread;
* ``aware_rotate``, ``aware_scale``, ``aware_hidden_pull`` — the filter-aware attacker: it
  knows the filter's rule, its configuration and seed, *and* the honest clients' sets (an
  omniscient upper bound: their distillation is deterministic given the seeds), and uploads
  the strongest version of the base attack the filter still keeps (:func:`strongest_kept`).

Each attack is measured as the global model's accuracy drop from a clean federation on the same
partitions, and for ``pull`` also as the source→target rate (source-class test images
classified as the target). The defence is :func:`fedistill.robust.filter_sets` as the
simulation's ``set_filter``; its false-rejection rate is the fraction of honest clients it
rejected. Backdoors through a federation are in :mod:`attacks.federated_backdoor`, the FedAvg
baseline against robust aggregators in :mod:`attacks.fedavg_poisoning`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from attacks.backdoor import attack_success_rate, clean_target_rate, poison
from attacks.triggers import white_trigger
from fedistill.data import DatasetInfo, LabeledImages
from fedistill.errors import ConfigError
from fedistill.evaluate import EvalConfig, accuracy, predict
from fedistill.federated import (
    DataTamper,
    SetTamper,
    client_partitions,
    simulate_feddm,
    train_global,
)
from fedistill.robust import FilterConfig, false_rejection_rate, filter_sets, sanitise_sets
from fedistill.synthetic import SyntheticSet

log = logging.getLogger(__name__)

DATA_ATTACKS = ("label_flip", "backdoor")
SET_ATTACKS = ("set_flip", "noise", "scale", "pull", "rotate", "hidden_pull")
AWARE_ATTACKS = ("aware_rotate", "aware_scale", "aware_hidden_pull")
ATTACKS = DATA_ATTACKS + SET_ATTACKS + AWARE_ATTACKS
# the strengths a filter-aware attacker tries, strongest first
AWARE_STRENGTHS: dict[str, list[float]] = {
    "rotate": [10, 9, 8, 7, 6, 5, 4, 3, 2],  # k classes (capped at K)
    "scale": [10.0, 6.0, 4.0, 3.0, 2.0, 1.5, 1.25, 1.1],
    "hidden_pull": [10, 8, 6, 5, 4, 3, 2, 1],  # images (capped at the set's IPC)
}


# --------------------------------------------------------------------------- tampers


def flip_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Classic label flipping: ``y → K − 1 − y`` (no class keeps its label when K is even)."""
    return num_classes - 1 - labels


def label_flip_tamper(malicious: list[int] | set[int]) -> DataTamper:
    """A ``data_tamper`` flipping the real labels of the ``malicious`` clients."""
    bad = set(malicious)

    def tamper(cid: int, part: LabeledImages) -> LabeledImages:
        if cid not in bad:
            return part
        return LabeledImages(part.images, flip_labels(part.labels, part.num_classes), part.info)

    return tamper


def malicious_set(
    attack: str,
    syn: SyntheticSet,
    info: DatasetInfo,
    *,
    seed: int = 0,
    scale: float = 10.0,
    pull_images: torch.Tensor | None = None,
    target: int = 0,
    k_rotate: int = 4,
    hide: int | None = None,
) -> SyntheticSet:
    """The set a malicious client uploads instead of ``syn``."""
    meta = dict(syn.meta)
    k = syn.num_classes
    if attack == "rotate":
        return rotate_labels(syn, k_rotate, seed=seed)
    if attack == "hidden_pull":
        if pull_images is None or len(pull_images) == 0:
            raise ConfigError("the 'hidden_pull' attack needs images of the source class")
        return hide_pull_images(syn, pull_images, target, hide)
    if attack == "set_flip":
        if syn.labels.is_floating_point():
            labels = syn.labels.roll(1, dims=1)
        else:
            labels = (syn.labels + 1) % k
        return SyntheticSet(syn.images, labels, meta)
    if attack == "noise":
        gen = torch.Generator().manual_seed(seed)
        return SyntheticSet(torch.randn(syn.images.shape, generator=gen), syn.labels, meta)
    if attack == "scale":
        return SyntheticSet(syn.images * scale, syn.labels, meta)
    if attack == "pull":
        if pull_images is None or len(pull_images) == 0:
            raise ConfigError("the 'pull' attack needs images of the source class")
        ipc = int(syn.meta.get("ipc", len(pull_images)))
        images = pull_images[:ipc]
        labels = torch.full((len(images),), target, dtype=torch.long)
        meta.pop("label_kind", None)
        return SyntheticSet(images.clone(), labels, meta)
    raise ConfigError(f"unknown set attack '{attack}'; choose one of {', '.join(SET_ATTACKS)}")


def rotate_labels(syn: SyntheticSet, k: int, *, seed: int = 0) -> SyntheticSet:
    """Partial label rotation: ``k`` of the set's classes (the ``k`` it holds most images of;
    ties by a seeded shuffle) rotate their labels ``c₁ → c₂ → … → c_k → c₁``; the other
    classes keep theirs. ``k ≤ 1`` changes nothing."""
    num = syn.num_classes
    if k < 0:
        raise ConfigError(f"k_rotate must be ≥ 0, got {k}")
    hard = syn.hard_labels()
    counts = torch.bincount(hard, minlength=num).double()
    gen = torch.Generator().manual_seed(seed)
    jitter = torch.rand(num, generator=gen) * 0.5
    order = torch.argsort(counts + jitter, descending=True)
    chosen = [int(c) for c in order[: min(k, num)] if counts[int(c)] > 0]
    perm = torch.arange(num)
    if len(chosen) > 1:
        for a, b in zip(chosen, chosen[1:] + chosen[:1], strict=True):
            perm[a] = b
    if syn.labels.is_floating_point():
        labels = torch.zeros_like(syn.labels)
        labels[:, perm] = syn.labels  # column c moves to perm[c]
    else:
        labels = perm[syn.labels]
    return SyntheticSet(syn.images, labels, dict(syn.meta))


def hide_pull_images(
    syn: SyntheticSet, pull_images: torch.Tensor, target: int, hide: int | None = None
) -> SyntheticSet:
    """An honest set with ``hide`` of its ``target``-class images replaced by ``pull_images``
    (real images of another class) that keep the label ``target``. A set holding fewer
    target-class images gets the pull images added up to its IPC, so the per-class cap still
    holds. Soft labels are turned to hard ones for the hidden images' class only."""
    ipc = int(syn.meta.get("ipc") or 0) or int(torch.bincount(syn.hard_labels()).max())
    hide = ipc if hide is None else int(hide)
    if hide < 0:
        raise ConfigError(f"hide must be ≥ 0, got {hide}")
    hide = min(hide, ipc, len(pull_images))
    hard = syn.hard_labels()
    images, labels = syn.images.clone(), hard.clone()
    slots = torch.nonzero(hard == target, as_tuple=True)[0][:hide]
    images[slots] = pull_images[: len(slots)].to(images)
    extra = min(hide - len(slots), ipc - int((hard == target).sum()))
    if extra > 0:
        add = pull_images[len(slots) : len(slots) + extra].to(images)
        images = torch.cat([images, add])
        labels = torch.cat([labels, torch.full((len(add),), target, dtype=labels.dtype)])
    meta = dict(syn.meta)
    meta.pop("label_kind", None)
    return SyntheticSet(images, labels, meta)


def strongest_kept(
    base: str,
    own: dict[int, SyntheticSet],
    honest: dict[int, SyntheticSet],
    info: DatasetInfo,
    *,
    filter_fn: Callable[[dict[int, SyntheticSet]], tuple[list[int], dict[int, str]]],
    make: Callable[[int, SyntheticSet, float], SyntheticSet],
    strengths: list[float] | None = None,
) -> tuple[float | None, dict[int, SyntheticSet]]:
    """The filter-aware attacker: the strongest strength (first in ``strengths``) at which
    the filter keeps every malicious set, with the sets it would upload; (None, honest
    versions) when the filter rejects even the weakest — then it uploads its honest set."""
    for strength in strengths or AWARE_STRENGTHS[base]:
        crafted = {cid: make(cid, syn, strength) for cid, syn in own.items()}
        kept, _ = filter_fn({**honest, **crafted})
        if all(cid in kept for cid in crafted):
            return strength, crafted
    return None, dict(own)


def set_tamper_for(
    attack: str,
    malicious: list[int] | set[int],
    info: DatasetInfo,
    *,
    seed: int = 0,
    scale: float = 10.0,
    pull_pools: dict[int, torch.Tensor] | None = None,
    target: int = 0,
    k_rotate: int = 4,
    hide: int | None = None,
) -> SetTamper:
    """A ``set_tamper`` replacing the ``malicious`` clients' uploads by :func:`malicious_set`."""
    bad = set(malicious)

    def tamper(cid: int, syn: SyntheticSet) -> SyntheticSet:
        if cid not in bad:
            return syn
        pool = (pull_pools or {}).get(cid)
        return malicious_set(
            attack,
            syn,
            info,
            seed=seed + cid,
            scale=scale,
            pull_images=pool,
            target=target,
            k_rotate=k_rotate,
            hide=hide,
        )

    return tamper


def _pull_pools(
    train: LabeledImages,
    parts: list,
    malicious: list[int],
    source: int,
    ipc: int,
    seed: int,
) -> dict[int, torch.Tensor]:
    """Source-class real images for each malicious client: its own, topped up from ``train``
    when it holds fewer than ``ipc`` (an attacker can find a few images of a public class)."""
    gen = torch.Generator().manual_seed(seed)
    everywhere = torch.nonzero(train.labels == source, as_tuple=True)[0]
    pools = {}
    for cid in malicious:
        idx = torch.as_tensor(parts[cid], dtype=torch.long)
        own = idx[train.labels[idx] == source]
        if len(own) < ipc:
            extra = everywhere[torch.randperm(len(everywhere), generator=gen)]
            own = torch.cat([own, extra[~torch.isin(extra, own)][: ipc - len(own)]])
        pools[cid] = train.images[own[:ipc]]
    return pools


# --------------------------------------------------------------------------- experiments


def _rate(model, test: LabeledImages, source: int, target: int, device) -> float:
    mask = test.labels == source
    if not mask.any():
        return float("nan")
    return float((predict(model, test.images[mask], device).argmax(1) == target).float().mean())


def robust_filter(info: DatasetInfo, config: FilterConfig | None, seed: int, device):
    """The server's robust filter (:func:`fedistill.robust.filter_sets`) as a ``set_filter``."""
    return lambda sets: filter_sets(sets, info, seed=seed, device=device, config=config)


def run_poisoning(
    train: LabeledImages,
    test: LabeledImages,
    *,
    attack: str,
    m: int,
    n: int,
    defended: bool,
    method: str = "dm",
    ipc: int = 10,
    method_config: Any | None = None,
    partitioner: str = "dirichlet",
    alpha: float = 0.5,
    eval_cfg: EvalConfig | None = None,
    filter_config: FilterConfig | None = None,
    malicious: list[int] | None = None,
    scale: float = 10.0,
    source: int = 1,
    target: int = 7,
    k_rotate: int = 4,
    hide: int | None = None,
    p_backdoor: float = 0.3,
    strengths: list[float] | None = None,
    clean_accuracy: float | None = None,
    clean_result: Any | None = None,
    sanitise: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """``m`` of ``n`` clients run ``attack`` in one-shot FedDM; the global model's accuracy,
    its drop from a clean federation (run here unless ``clean_accuracy`` is given) and, when
    ``defended``, what the robust filter rejected and its false-rejection rate.

    Strengths: ``scale`` (scale), ``k_rotate`` (rotate), ``hide`` (hidden_pull, default IPC),
    ``p_backdoor`` (backdoor); the ``aware_*`` attackers pick their own from ``strengths``
    (default :data:`AWARE_STRENGTHS`) and need the clean federation's sets (``clean_result``,
    a :class:`~fedistill.federated.FedResult`, run here when not given). The result has
    ``detection_rate`` (malicious clients rejected), ``false_rejection_rate``,
    ``accuracy_drop``, ``strength``, and for pull attacks ``source_to_target``, for
    ``backdoor`` ``asr`` and ``clean_target_rate``. With ``defended`` and ``sanitise`` a second
    global model is trained (same server seed) on the kept sets after
    :func:`fedistill.robust.sanitise_sets`; its figures are under ``"sanitised"``."""
    if attack not in ATTACKS:
        raise ConfigError(f"unknown attack '{attack}'; choose one of {', '.join(ATTACKS)}")
    if not 0 <= m <= n:
        raise ConfigError(f"need 0 ≤ m ≤ n, got m={m}, n={n}")
    bad = sorted(malicious) if malicious is not None else list(range(m))
    if len(bad) != m or any(not 0 <= b < n for b in bad):
        raise ConfigError(f"malicious must list {m} distinct client ids in 0..{n - 1}")
    if not 0 <= p_backdoor <= 1:
        raise ConfigError(f"p_backdoor must lie in [0, 1], got {p_backdoor}")
    cfg = eval_cfg or EvalConfig(num_models=1)
    common = dict(
        num_clients=n,
        partitioner=partitioner,
        alpha=alpha,
        method=method,
        ipc=ipc,
        method_config=method_config,
        eval_cfg=cfg,
        seed=seed,
        device=device,
    )
    t0 = time.perf_counter()
    out: dict[str, Any] = {
        "attack": attack,
        "m": m,
        "n": n,
        "malicious": bad,
        "defended": defended,
        "method": method,
        "ipc": ipc,
        "partitioner": partitioner,
        "alpha": alpha,
        "seed": seed,
    }
    base = attack.removeprefix("aware_")
    pulls = base in ("pull", "hidden_pull")
    aware = attack in AWARE_ATTACKS
    if (clean_accuracy is None or aware) and clean_result is None:
        clean_result = simulate_feddm(train, test, **common)
    if clean_accuracy is None:
        clean_accuracy = clean_result.accuracy
        if pulls:
            out["clean_source_to_target"] = _rate(clean_result.model, test, source, target, device)
    data_tamper = label_flip_tamper(bad) if attack == "label_flip" else None
    trigger = white_trigger(train.info)
    if attack == "backdoor":
        bad_set = set(bad)

        def data_tamper(cid: int, part: LabeledImages) -> LabeledImages:
            if cid not in bad_set:
                return part
            return poison(part, trigger, p_backdoor, target, seed=seed + cid)[0]

    pools = None
    if pulls:
        parts = client_partitions(train, n, partitioner, alpha, seed)
        pools = _pull_pools(train, parts, bad, source, ipc, seed)
        out.update(source=source, target=target)
    strength: float | None = {
        "scale": scale,
        "rotate": k_rotate,
        "hidden_pull": ipc if hide is None else hide,
        "backdoor": p_backdoor,
    }.get(attack)
    set_tamper = None
    if attack in SET_ATTACKS:
        set_tamper = set_tamper_for(
            attack,
            bad,
            train.info,
            seed=seed,
            scale=scale,
            pull_pools=pools,
            target=target,
            k_rotate=k_rotate,
            hide=hide,
        )
    elif aware:
        filter_fn = robust_filter(train.info, filter_config, seed, device)

        def make(cid: int, syn: SyntheticSet, level: float) -> SyntheticSet:
            return malicious_set(
                base,
                syn,
                train.info,
                seed=seed + cid,
                scale=float(level),
                pull_images=(pools or {}).get(cid),
                target=target,
                k_rotate=int(level),
                hide=int(level),
            )

        honest_sets = {c: s for c, s in clean_result.sets.items() if c not in bad}
        own = {c: clean_result.sets[c] for c in bad if c in clean_result.sets}
        strength, crafted = strongest_kept(
            base,
            own,
            honest_sets,
            train.info,
            filter_fn=filter_fn,
            make=make,
            strengths=strengths,
        )

        def set_tamper(cid: int, syn: SyntheticSet) -> SyntheticSet:
            return crafted.get(cid, syn)

    out["strength"] = strength
    seen: dict[int, SyntheticSet] = {}
    set_filter = None
    if defended:
        inner = robust_filter(train.info, filter_config, seed, device)

        def set_filter(sets: dict[int, SyntheticSet]):
            seen.update(sets)
            return inner(sets)

    result = simulate_feddm(
        train,
        test,
        data_tamper=data_tamper,
        set_tamper=set_tamper,
        set_filter=set_filter,
        **common,
    )
    honest = [c for c in range(n) if c not in bad]
    out.update(
        accuracy=result.accuracy,
        clean_accuracy=clean_accuracy,
        accuracy_drop=clean_accuracy - result.accuracy,
        kept=result.kept,
        rejected={str(k): v for k, v in result.rejected.items()},
        false_rejection_rate=false_rejection_rate(result.rejected, honest),
        detection_rate=(
            sum(1 for b in bad if b in result.rejected) / len(bad) if bad else float("nan")
        ),
        seconds=time.perf_counter() - t0,
        eval=asdict(cfg),
    )
    if pulls:
        out["source_to_target"] = _rate(result.model, test, source, target, device)
    if attack == "backdoor":
        out["asr"] = attack_success_rate(result.model, test, trigger, target, device)
        out["clean_target_rate"] = clean_target_rate(result.model, test, target, device)
    if defended and sanitise:
        kept_sets = {k: seen[k] for k in result.kept}
        cleaned, dropped = sanitise_sets(
            kept_sets, train.info, seed=seed, device=device, config=filter_config
        )
        model = train_global(list(cleaned.values()), train.info, cfg, seed=seed, device=device)
        acc = accuracy(model, test, device)
        san: dict[str, Any] = {
            "accuracy": acc,
            "accuracy_drop": clean_accuracy - acc,
            "dropped": {str(k): v for k, v in dropped.items()},
            "dropped_malicious": sum(dropped.get(b, 0) for b in bad),
            "dropped_honest": sum(v for k, v in dropped.items() if k not in bad),
        }
        if pulls:
            san["source_to_target"] = _rate(model, test, source, target, device)
        if attack == "backdoor":
            san["asr"] = attack_success_rate(model, test, trigger, target, device)
            san["clean_target_rate"] = clean_target_rate(model, test, target, device)
        out["sanitised"] = san
    log.info(
        "poisoning %s m=%d/%d defended=%s: accuracy %.4f (clean %.4f)",
        attack,
        m,
        n,
        defended,
        result.accuracy,
        clean_accuracy,
    )
    return out


def run_poisoning_table(
    train: LabeledImages,
    test: LabeledImages,
    *,
    attacks: tuple[str, ...] = ATTACKS,
    m: int = 1,
    n: int = 5,
    **kwargs: Any,
) -> dict[str, Any]:
    """Every attack with and without the defence, against one clean federation; plus the
    defence on the clean federation (its false-rejection rate when nobody attacks)."""
    cfg_keys = {"method", "ipc", "method_config", "partitioner", "alpha", "eval_cfg", "seed"}
    common = {k: v for k, v in kwargs.items() if k in cfg_keys}
    device = kwargs.get("device", "cpu")
    clean = simulate_feddm(train, test, num_clients=n, device=device, **common)
    clean_defended = simulate_feddm(
        train,
        test,
        num_clients=n,
        device=device,
        set_filter=robust_filter(
            train.info, kwargs.get("filter_config"), common.get("seed", 0), device
        ),
        **common,
    )
    rows = []
    for attack in attacks:
        for defended in (False, True):
            rows.append(
                run_poisoning(
                    train,
                    test,
                    attack=attack,
                    m=m,
                    n=n,
                    defended=defended,
                    clean_accuracy=clean.accuracy,
                    **kwargs,
                )
            )
    return {
        "clean_accuracy": clean.accuracy,
        "clean_defended_accuracy": clean_defended.accuracy,
        "clean_false_rejection_rate": false_rejection_rate(clean_defended.rejected, list(range(n))),
        "clean_rejected": {str(k): v for k, v in clean_defended.rejected.items()},
        "rows": rows,
    }
