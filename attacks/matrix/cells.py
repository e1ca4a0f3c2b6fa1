"""The cells of the attack matrix, one method per kind (utility, mia, backdoor, poisoning,
dp_audit), mixed into :class:`attacks.matrix.runner.MatrixRun`, and the :class:`Cell` record
they return."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attacks.dp_audit import finite_or_none
from attacks.matrix.config import FEDAVG, MIA_ATTACKS, RowSpec, has_field, make_config
from attacks.targets import REAL, PipelineConfig
from fedistill.errors import ConfigError


@dataclass
class Cell:
    """One measurement: ``status`` ok | failed | skipped, a ``summary`` of the numbers the table
    shows, the full ``result``, the ``budget`` it ran with, and why it is missing if it is."""

    status: str
    seconds: float = 0.0  # wall clock
    cpu_seconds: float = 0.0  # this process's CPU time (all threads): less noisy under load
    summary: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    reason: str | None = None
    traceback: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


class Skip(Exception):
    """A cell that does not apply to its row (recorded as skipped with the message)."""


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "row"


def jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, torch.Tensor):
        return jsonable(x.tolist())
    if isinstance(x, Path):
        return str(x)
    if x is None or isinstance(x, bool | int | float | str):
        return x
    return str(x)


def populations(cells: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each population's headline figures from an :func:`attacks.metrics.metrics_dict` cell:
    AUC and TPR at 1% / 0.1% FPR, their 95% intervals, the "< x" text, the FPR resolution."""
    keys = ("auc", "tpr_at_fpr", "ci95", "tpr_at_fpr_text", "fpr_resolution", "n_in", "n_out")
    return {pop: {k: cell[k] for k in keys if k in cell} for pop, cell in cells.items()}


class AttackCells:
    """The measurements; ``self`` is a :class:`attacks.matrix.runner.MatrixRun`."""

    # ------------------------------------------------------------------ helpers

    def _pipeline(self, name: str) -> tuple[RowSpec, PipelineConfig]:
        if name == FEDAVG:
            raise Skip("not applicable: the fedavg row is the federated baseline for poisoning")
        return self.pipelines[name]

    def _eval_cfg(self, pcfg: PipelineConfig):
        return pcfg.eval_config()  # one model, the budget's protocol

    # ------------------------------------------------------------------ utility

    def utility(self, name: str) -> Cell:
        if name == FEDAVG:
            return self._fedavg_clean()
        from attacks.targets import train_pipeline
        from fedistill.evaluate import accuracy

        _row, pcfg = self._pipeline(name)
        model, syn, budget = train_pipeline(
            pcfg, self.train, seed=self.cfg.seed, device=self.device
        )
        acc = accuracy(model, self.test, self.device)
        priv = (syn.privacy if syn is not None else None) or {}
        summary = {
            "accuracy": acc,
            "epsilon": finite_or_none(priv.get("epsilon")),
            "delta": finite_or_none(priv.get("delta")),
        }
        if syn is not None and "rho" in syn.meta.get("hyperparameters", {}):
            summary["rho"] = syn.meta["hyperparameters"]["rho"]
        result = {"test_accuracy": acc, "privacy": priv or None}
        if syn is not None:
            result["synthetic"] = {
                "images": len(syn),
                "label_kind": syn.meta.get("label_kind", "hard"),
                "iterations": syn.meta.get("iterations"),
                "hyperparameters": syn.meta.get("hyperparameters"),
            }
        return Cell(
            "ok", summary=summary, budget=budget | {"pipeline": pcfg.to_dict()}, result=result
        )

    def _fedavg_common(self) -> dict[str, Any]:
        p, b = self.cfg.poisoning, self.cfg.budget
        return dict(
            num_clients=p.n,
            partitioner=p.partitioner,
            alpha=p.alpha,
            rounds=p.fedavg_rounds,
            local_epochs=p.fedavg_local_epochs,
            lr=p.fedavg_lr,
            batch_size=p.fedavg_batch_size,
            model=b.model,
            model_kwargs=dict(b.model_kwargs),
            seed=self.cfg.seed,
            device=self.device,
        )

    def _fedavg_clean(self) -> Cell:
        from fedistill.federated import simulate_fedavg

        common = self._fedavg_common()
        res = simulate_fedavg(self.train, self.test, **common)
        budget = {k: v for k, v in common.items() if k != "device"} | {"strategy": FEDAVG}
        return Cell(
            "ok",
            summary={"accuracy": res.accuracy, "epsilon": None},
            budget=budget,
            result=res.to_dict(),
        )

    # ------------------------------------------------------------------ membership inference

    def mia(self, name: str) -> Cell:
        """Attacks on the model trained on the row's set: loss, LiRA (selection-aware where the
        method records what it exposed) and RMIA, on all members and on the exposed ones."""
        from attacks.lira import LiRAConfig, run_mia

        _row, pcfg = self._pipeline(name)
        spec = self.cfg.mia
        lira = LiRAConfig(
            num_shadows=spec.num_shadows,
            shift=spec.shift,
            leave_one_out=spec.leave_one_out,
            num_targets=spec.num_targets,
            n_boot=spec.n_boot,
            jobs=spec.jobs,
        )
        out = run_mia(
            self.train,
            self.test,
            pcfg,
            num_shadows=spec.num_shadows,
            pool_size=spec.pool_size,
            seed=self.cfg.seed,
            device=self.device,
            lira=lira,
            plot=self.plots / f"roc_{_slug(name)}.png",
        )
        measured = "pooled" if out.get("pooled") else "attacks"
        summary: dict[str, Any] = {"measured_on": measured}
        for attack in MIA_ATTACKS:
            m = out[measured][attack]
            summary[attack] = {
                k: m[k]
                for k in (
                    "auc",
                    "balanced_accuracy",
                    "tpr@1%fpr",
                    "tpr@0.1%fpr",
                    "tpr@1%fpr_resolved",
                    "tpr@0.1%fpr_resolved",
                    "fpr_resolution",
                    "n_in",
                    "n_out",
                )
            }
        summary["populations"] = {
            attack: populations(out["populations"][attack]) for attack in MIA_ATTACKS
        }
        summary["member_fit"] = out.get("member_fit")
        summary["target_test_accuracy"] = out["target"].get("test_accuracy")
        summary["utility"] = self._attacked_utility(name, summary["target_test_accuracy"])
        budget = {
            "num_shadows": spec.num_shadows,
            "num_targets": spec.num_targets,
            "pool_size": out["pool_size"],
            "members": out["target"]["members"],
            "nonmembers": out["target"]["nonmembers"],
            "exposed": out.get("exposed"),
            "lira": out["lira"],
            "target": out["target"]["budget"],
        }
        return Cell("ok", summary=summary, budget=budget, result=out)

    def mia_set(self, name: str) -> Cell:
        """The server's view: each candidate's distance to the nearest image of the set the
        pipeline released (no model), on all members and on the exposed ones, and the share of
        synthetic images that sit within a real image's neighbourhood (memorisation). A
        factorised set (IDC, HaBa) is attacked on its decoded images (``distances``) and as the
        server receives it (``received_distances``: tiles or bases; ``None`` otherwise)."""
        from attacks.set_mia import SetMIAConfig, run_set_mia

        row, pcfg = self._pipeline(name)
        if row.method == REAL:
            raise Skip("not applicable: the `real` row releases no set (its model is attacked)")
        spec = self.cfg.mia
        config = SetMIAConfig(
            num_targets=spec.num_targets, num_shadows=spec.set_shadows, n_boot=spec.n_boot
        )
        slug = _slug(name)
        out = run_set_mia(
            self.train,
            pcfg,
            config,
            pool_size=spec.pool_size,
            seed=self.cfg.seed,
            device=self.device,
            memorisation_png=self.plots / f"nearest_{slug}.png",
            plot=self.plots / f"roc_set_{slug}.png",
        )
        summary = {
            "distances": {d: populations(cells) for d, cells in out["attacks"].items()},
            "received_distances": None
            if out["received"] is None
            else {d: populations(cells) for d, cells in out["received"].items()},
            "memorisation_share": out["memorisation"].get("share_within"),
        }
        budget = {
            "pool_size": out["pool_size"],
            "num_targets": out["num_targets"],
            "members": out["members"],
            "exposed": out["exposed"],
            "calibrated": out["calibrated"],
            "num_shadows": out["num_shadows"],
            "set_images": out["set_images"],
        }
        return Cell("ok", summary=summary, budget=budget, result=out)

    def _attacked_utility(self, name: str, attacked: float | None) -> dict[str, Any]:
        """The attacked pipeline's own accuracy beside the full-data figure of the row."""
        full = self.cell(name, "utility")
        full_acc = full["summary"]["accuracy"] if full else None
        return {
            "attacked": attacked,
            "full_data": full_acc,
            "gap": None if attacked is None or full_acc is None else full_acc - attacked,
        }

    # ------------------------------------------------------------------ backdoor

    def backdoor(self, name: str) -> Cell:
        """ASR on triggered non-target test images, the same models' target-class rate on clean
        non-target images and their clean accuracy, each mean ± std over ``models`` final-model
        seeds; the clean pipeline's ASR with the same trigger as the control; for DOORPING also
        a random-trigger and a NAIVE set from the same loop."""
        from attacks.backdoor import run_backdoor, run_real_backdoor

        row, pcfg = self._pipeline(name)
        spec = self.cfg.backdoor
        if spec.target >= self.train.num_classes:
            raise ConfigError(f"backdoor target {spec.target} is not a class of the dataset")
        ecfg = replace(self._eval_cfg(pcfg), num_models=spec.models)
        common = dict(p=spec.p, target=spec.target, eval_cfg=ecfg, seed=self.cfg.seed)
        if row.method == REAL:
            out = run_real_backdoor(self.train, self.test, device=self.device, **common)
            kind = "naive (poisoned real training)"
        elif spec.kind == "naive" or row.method not in DOORPING_LOOPS:
            # NAIVE; also where kind = "doorping" but the row's method has no DOORPING loop
            out = run_backdoor(
                self.train,
                self.test,
                kind="naive",
                method=row.method,
                ipc=pcfg.ipc,
                method_overrides=pcfg.method_options,
                baseline=spec.baseline,
                device=self.device,
                **common,
            )
            kind = "naive"
        else:
            dcfg = doorping_config_for(row.method, pcfg.method_options, spec.doorping)
            out = run_backdoor(
                self.train,
                self.test,
                kind="doorping",
                ipc=pcfg.ipc,
                doorping_config=dcfg,
                baseline=spec.baseline,
                controls=spec.controls,
                device=self.device,
                **common,
            )
            kind = f"doorping ({dcfg.loop})"
        figures = ("asr", "clean_target_rate", "clean_accuracy")
        summary: dict[str, Any] = {"kind": kind, "num_models": out["attacked"].get("num_models")}
        for key in figures:
            summary[key] = out["attacked"][key]
            summary[f"{key}_std"] = out["attacked"].get(f"{key}_std")
        for other in ("baseline", "random_trigger", "naive"):
            if out.get(other):
                summary[f"{other}_asr"] = out[other]["asr"]
                summary[f"{other}_asr_std"] = out[other].get("asr_std")
        summary["poisoned"] = out.get("poisoned")
        if "trigger_updates" in out:
            summary["trigger_updates"] = out["trigger_updates"]
        budget = {
            "kind": kind,
            "p": spec.p,
            "target": spec.target,
            "models": spec.models,
            "poisoned": out.get("poisoned"),
            "method": out.get("method", REAL),
            "ipc": None if row.method == REAL else pcfg.ipc,
            "method_options": pcfg.method_options,
            "trigger": out.get("trigger"),
            "doorping": out.get("doorping_config"),
            "eval": asdict(ecfg),
        }
        return Cell("ok", summary=summary, budget=budget, result=out)

    # ------------------------------------------------------------------ poisoning

    def _poisoning_kwargs(self, pcfg: PipelineConfig) -> dict[str, Any]:
        from fedistill.robust import FilterConfig

        p = self.cfg.poisoning
        return dict(
            attack=p.attack,
            m=p.m,
            n=p.n,
            method=pcfg.method,
            ipc=pcfg.ipc,
            method_config=dict(pcfg.method_options),
            partitioner=p.partitioner,
            alpha=p.alpha,
            eval_cfg=self._eval_cfg(pcfg),
            filter_config=make_config(FilterConfig, p.filter, "attacks.poisoning.filter"),
            scale=p.scale,
            source=p.source,
            target=p.target,
            seed=self.cfg.seed,
            device=self.device,
        )

    def _poisoning_budget(self, out: dict[str, Any], pcfg: PipelineConfig | None) -> dict:
        p = self.cfg.poisoning
        b = {
            "attack": p.attack,
            "m": p.m,
            "n": p.n,
            "malicious": out.get("malicious", list(range(p.m))),
            "partitioner": p.partitioner,
            "alpha": p.alpha,
        }
        if pcfg is not None:
            b |= {
                "federation": "one-shot FedDM",
                "method": pcfg.method,
                "ipc": pcfg.ipc,
                "method_options": pcfg.method_options,
                "eval": out.get("eval"),
            }
        return b

    def poisoning(self, name: str) -> Cell:
        if name == FEDAVG:
            return self._fedavg_poisoning()
        from attacks.poisoning import run_poisoning

        row, pcfg = self._pipeline(name)
        if row.method == REAL:
            raise Skip(
                "not applicable: FedDM needs a distillation method (the fedavg row is "
                "the federation without synthetic sets)"
            )
        out = run_poisoning(self.train, self.test, defended=False, **self._poisoning_kwargs(pcfg))
        summary = {
            "clean_accuracy": out["clean_accuracy"],
            "accuracy": out["accuracy"],
            "accuracy_drop": out["accuracy_drop"],
        }
        if "source_to_target" in out:
            summary["source_to_target"] = out["source_to_target"]
        return Cell("ok", summary=summary, budget=self._poisoning_budget(out, pcfg), result=out)

    def poisoning_defended(self, name: str) -> Cell:
        if name == FEDAVG:
            return self._fedavg_defended()
        from attacks.poisoning import run_poisoning

        row, pcfg = self._pipeline(name)
        if row.method == REAL:
            raise Skip("not applicable: FedDM needs a distillation method")
        undefended = self.cell(name, "poisoning")
        clean = undefended["summary"]["clean_accuracy"] if undefended else None
        out = run_poisoning(
            self.train,
            self.test,
            defended=True,
            clean_accuracy=clean,
            **self._poisoning_kwargs(pcfg),
        )
        summary = {
            "clean_accuracy": out["clean_accuracy"],
            "accuracy": out["accuracy"],
            "accuracy_drop": out["accuracy_drop"],
            "false_rejection_rate": out["false_rejection_rate"],
            "detection_rate": out["detection_rate"],
            "rejected": sorted(int(k) for k in out["rejected"]),
        }
        budget = self._poisoning_budget(out, pcfg) | {
            "filter": asdict(self._poisoning_kwargs(pcfg)["filter_config"])
        }
        return Cell("ok", summary=summary, budget=budget, result=out)

    def _fedavg_poisoning(self) -> Cell:
        from attacks.poisoning import label_flip_tamper
        from fedistill.federated import simulate_fedavg

        p = self.cfg.poisoning
        if p.attack != "label_flip":
            raise Skip(
                f"not applicable: '{p.attack}' tampers with an uploaded synthetic set; "
                "FedAvg clients upload model updates (only label_flip applies)"
            )
        common = self._fedavg_common()
        clean_cell = self.cell(FEDAVG, "utility")
        if clean_cell is not None:
            clean = clean_cell["summary"]["accuracy"]
        else:
            clean = simulate_fedavg(self.train, self.test, **common).accuracy
        res = simulate_fedavg(
            self.train, self.test, data_tamper=label_flip_tamper(list(range(p.m))), **common
        )
        summary = {
            "clean_accuracy": clean,
            "accuracy": res.accuracy,
            "accuracy_drop": clean - res.accuracy,
        }
        budget = self._poisoning_budget({}, None) | {
            "federation": "FedAvg",
            **{k: v for k, v in common.items() if k not in ("device", "num_clients")},
        }
        return Cell("ok", summary=summary, budget=budget, result=res.to_dict())

    def _fedavg_defended(self) -> Cell:
        """FedAvg with Flower's robust aggregators (the library's twins of FedMedian,
        FedTrimmedAvg, MultiKrum) beside plain FedAvg, against label flip, a scaled update and
        an inflated example count by the same ``m`` of ``n`` clients: the defence of model
        updates, cell by cell beside the robust filter's defence of synthetic sets."""
        from attacks.fedavg_poisoning import FEDAVG_ATTACKS, run_fedavg_poisoning
        from fedistill.robust import AGGREGATORS

        p = self.cfg.poisoning
        common = {
            k: v for k, v in self._fedavg_common().items() if k not in ("num_clients", "seed")
        }
        out = run_fedavg_poisoning(
            self.train,
            self.test,
            attacks=FEDAVG_ATTACKS,
            aggregators=AGGREGATORS,
            m=p.m,
            n=p.n,
            scale=p.scale,
            seed=self.cfg.seed,
            **common,
        )
        drops = {
            attack: {
                r["aggregator"]: r["accuracy_drop"] for r in out["rows"] if r["attack"] == attack
            }
            for attack in FEDAVG_ATTACKS
        }
        robust = [a for a in AGGREGATORS if a != "fedavg"]
        headline = p.attack if p.attack in drops else "label_flip"
        summary = {
            "attack": headline,
            "clean_accuracy": out["clean"],
            "accuracy_drop": max(drops[headline][a] for a in robust),  # the weakest rule's
            "accuracy_drops": drops,
            "aggregators": list(AGGREGATORS),
            "false_rejection_rate": None,
        }
        budget = self._poisoning_budget({}, None) | {
            "federation": "FedAvg",
            "defence": "robust aggregation: " + ", ".join(robust),
            "attacks": list(FEDAVG_ATTACKS),
            "scale": p.scale,
            "inflated": out["inflated"],
            "weighting": out["weighting"],
            "trim_beta": out["trim_beta"],
            **{k: v for k, v in common.items() if k != "device"},
        }
        return Cell("ok", summary=summary, budget=budget, result=out)

    # ------------------------------------------------------------------ DP audit

    def dp_audit_if_private(self, name: str) -> Cell:
        if name == FEDAVG:
            raise Skip("not applicable: FedAvg here has no DP mechanism")
        util = self.cell(name, "utility")
        row, _ = self._pipeline(name)
        if util is not None:
            private = util["summary"].get("epsilon") is not None
        else:
            private = row.method != REAL and has_field(row.method, "epsilon")
        if not private:
            raise Skip(
                "not a DP pipeline (no ε in the set's provenance); list it in "
                "attacks.dp-audit.rows to audit it anyway"
            )
        return self.dp_audit(name)

    def dp_audit(self, name: str) -> Cell:
        from attacks.dp_audit import run_dp_audit

        _row, pcfg = self._pipeline(name)
        spec = self.cfg.dp_audit
        out = run_dp_audit(
            self.train,
            pcfg,
            num_runs=spec.num_runs,
            base_size=spec.base_size,
            canaries_per_run=spec.canaries_per_run,
            canary=spec.canary,
            delta=spec.delta,
            confidence=spec.confidence,
            seed=self.cfg.seed,
            device=self.device,
        )
        summary = {
            "epsilon_lb": out["epsilon_lb"],
            "ceiling": out["ceiling"],
            "claimed_epsilon": out["claimed_epsilon"],
            "accountant_epsilon": out["accountant_epsilon"],
            "trials": out["trials"],
            "verdict": out["verdict"],
            "consistent": out["consistent"],
            "delta": out["delta"],
        }
        if pcfg.method == "psg":  # white-box: gradient canaries in the mechanism itself
            from attacks.dp_audit_power import audit_psg

            white = audit_psg(
                pcfg.method_options, len(self.train), spec.white_box_trials, seed=self.cfg.seed
            )
            keys = ("epsilon_lb", "ceiling", "claimed_epsilon", "accountant_epsilon", "trials")
            summary["white_box"] = {k: v for k, v in white.to_dict().items() if k in keys}
            summary["white_box"]["verdict"] = white.verdict
            summary["white_box"]["n"] = len(self.train)
        budget = {
            "num_runs": spec.num_runs,
            "runs_for_bound": out["runs_for_bound"],
            "canary": out["canary"],
            "confidence": spec.confidence,
            "delta": out["delta"],
            "pipeline": out["budget"],
        }
        return Cell("ok", summary=summary, budget=budget, result=out)


# the registry methods whose loop DOORPING runs, and that loop
DOORPING_LOOPS = {"dm": "dm", "dc": "dc", "dsa": "dc"}


def doorping_config_for(method: str, options: dict[str, Any], overrides: dict[str, Any]) -> Any:
    """DOORPING's loop set up like the row's DM or DC/DSA run (init, learning rates, batches,
    schedule, augmentation, network); ``overrides`` (``[attacks.backdoor] doorping``) last."""
    from attacks.doorping import DoorpingConfig

    loop = DOORPING_LOOPS[method]
    base: dict[str, Any] = {"loop": loop}
    shared = ("init", "lr_img", "batch_real", "dsa", "dsa_strategy", "model")
    dc_only = ("outer_loop", "inner_loop", "lr_net", "batch_train")
    for k in shared + (dc_only if loop == "dc" else ()):
        if k in options:
            base[k] = options[k]
    if method == "dsa" and "dsa" not in options:
        base["dsa"] = True
    kw = {k: options[k] for k in ("width", "depth", "norm") if k in options}
    if kw:
        base["model_kwargs"] = kw
    if "iterations" in options:
        if loop == "dm" and "dm_iterations" not in overrides:
            base["epochs"], base["dm_iterations"] = 1, options["iterations"]
        elif loop == "dc" and "epochs" not in overrides:
            base["epochs"] = options["iterations"]
    return make_config(DoorpingConfig, {**base, **overrides}, "attacks.backdoor.doorping")
