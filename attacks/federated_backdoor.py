"""Backdoors planted through a one-shot FedDM federation by some of its clients.

NAIVE (:func:`attacks.backdoor.poison` on the malicious clients' data) or DOORPING
(:func:`attacks.doorping.doorping` sets uploaded instead of honest ones), with or without the
server's robust filter; the global model's ASR, clean target-class rate and clean accuracy
over several server seeds (:func:`attacks.backdoor.summarise_models`)."""

from __future__ import annotations

import time
from typing import Any

import torch

from attacks.backdoor import attack_success_rate, backdoor_metrics, poison, summarise_models
from attacks.doorping import DoorpingConfig, doorping
from attacks.poisoning import robust_filter
from attacks.triggers import Trigger, white_trigger
from fedistill.data import LabeledImages
from fedistill.errors import ConfigError
from fedistill.evaluate import EvalConfig
from fedistill.federated import client_partitions, simulate_feddm, train_global
from fedistill.robust import FilterConfig
from fedistill.synthetic import SyntheticSet


def run_federated_backdoor(
    train: LabeledImages,
    test: LabeledImages,
    *,
    kind: str = "naive",
    m: int = 1,
    n: int = 5,
    p: float = 1.0,
    target: int = 0,
    method: str = "dm",
    ipc: int = 10,
    method_config: Any | None = None,
    partitioner: str = "dirichlet",
    alpha: float = 0.5,
    eval_cfg: EvalConfig | None = None,
    doorping_config: DoorpingConfig | None = None,
    trigger: Trigger | None = None,
    defended: bool = False,
    filter_config: FilterConfig | None = None,
    baseline: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """A backdoor planted by the first ``m`` of ``n`` clients of one-shot FedDM.

    NAIVE: each malicious client stamps a white patch onto ``p`` of its images and relabels
    them before distilling with ``method``. DOORPING: each malicious client uploads a
    :func:`~attacks.backdoor.doorping` set of its data instead (the clients collude: each starts
    from the trigger the previous one optimised). Reports the global model's ASR and clean
    accuracy, and (``baseline``) the ASR of a clean federation's model with the same trigger.
    """
    if kind not in ("naive", "doorping"):
        raise ConfigError(f"unknown backdoor kind '{kind}'; choose naive or doorping")
    cfg = eval_cfg or EvalConfig(num_models=1)
    bad = list(range(m))
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
    state: dict[str, Any] = {"trigger": trigger, "changes": []}
    data_tamper = set_tamper = None
    if kind == "naive":
        state["trigger"] = trigger or white_trigger(train.info)

        def data_tamper(cid: int, part: LabeledImages) -> LabeledImages:
            if cid not in bad:
                return part
            return poison(part, state["trigger"], p, target, seed=seed + cid)[0]

    else:
        parts = client_partitions(train, n, partitioner, alpha, seed)
        dcfg = doorping_config or DoorpingConfig()

        def set_tamper(cid: int, syn: SyntheticSet) -> SyntheticSet:
            if cid not in bad:
                return syn
            res = doorping(
                train.subset(parts[cid]),
                ipc,
                p=p,
                target=target,
                config=dcfg,
                trigger=state["trigger"],
                seed=seed + cid,
                device=device,
            )
            state["trigger"] = res.trigger
            state["changes"].append(res.trigger_change)
            return res.syn

    set_filter = robust_filter(train.info, filter_config, seed, device) if defended else None
    result = simulate_feddm(
        train,
        test,
        data_tamper=data_tamper,
        set_tamper=set_tamper,
        set_filter=set_filter,
        **common,
    )
    trig: Trigger = state["trigger"]
    out: dict[str, Any] = {
        "kind": kind,
        "m": m,
        "n": n,
        "p": p,
        "target": target,
        "method": method if kind == "naive" else f"doorping-{dcfg.loop}",
        "ipc": ipc,
        "defended": defended,
        "accuracy": result.accuracy,
        "asr": attack_success_rate(result.model, test, trig, target, device),
        "kept": result.kept,
        "rejected": {str(k): v for k, v in result.rejected.items()},
        "trigger": trig.to_dict(),
        "trigger_changes": state["changes"],
        "models": _global_models_backdoor(result, train, test, trig, target, cfg, seed, device),
    }
    if baseline:
        clean = simulate_feddm(train, test, **common)
        out["clean_accuracy"] = clean.accuracy
        out["baseline_asr"] = attack_success_rate(clean.model, test, trig, target, device)
        out["baseline_models"] = _global_models_backdoor(
            clean, train, test, trig, target, cfg, seed, device
        )
    out["seconds"] = time.perf_counter() - t0
    return out


def _global_models_backdoor(
    result: Any,
    train: LabeledImages,
    test: LabeledImages,
    trigger: Trigger,
    target: int,
    cfg: EvalConfig,
    seed: int,
    device: str | torch.device,
) -> dict[str, Any]:
    """ASR, clean target-class rate and clean accuracy of the federation's global model and of
    ``cfg.num_models − 1`` more trained on the same kept sets with the next seeds (the server's
    step with another seed), mean ± std (:func:`attacks.backdoor.summarise_models`)."""
    rows = [backdoor_metrics(result.model, test, trigger, target, device)]
    seeds = [seed]
    pooled = [result.sets[k] for k in result.kept]
    for m in range(1, cfg.num_models):
        model = train_global(pooled, train.info, cfg, seed=seed + m, device=device)
        rows.append(backdoor_metrics(model, test, trigger, target, device))
        seeds.append(seed + m)
    return summarise_models(rows, seeds)
