"""Runs the cells of one configuration, attack by attack, and keeps ``report.json`` up to date."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from attacks.matrix.cells import AttackCells, Cell, Skip, jsonable
from attacks.matrix.config import (
    ATTACK_CELLS,
    ATTACKS,
    CELL_SECTION,
    CELLS,
    FEDAVG,
    SCHEMA,
    AuditConfig,
)
from attacks.matrix.plots import write_plots
from attacks.matrix.render import render_markdown
from fedistill.models import DEFAULT_GEOMETRY

log = logging.getLogger(__name__)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_facts() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "git_commit": _git_commit(),
        "convnet_geometry": DEFAULT_GEOMETRY,  # a report without it predates "reference"
    }


# section keys that schedule the work without changing what is measured
SCHEDULING_KEYS = ("jobs",)


def _measured(cfg: dict[str, Any], section: str) -> Any:
    """A config section without its scheduling keys (a cell measured with 1 or 4 jobs is the
    same measurement, up to float rounding)."""
    sec = cfg.get(section)
    if not isinstance(sec, dict):
        return sec
    return {k: v for k, v in sec.items() if k not in SCHEDULING_KEYS}


class MatrixRun(AttackCells):
    """Runs the cells of one :class:`AuditConfig` and keeps ``report.json`` up to date."""

    def __init__(
        self,
        cfg: AuditConfig,
        out: str | Path,
        *,
        command: str | None = None,
        progress: bool = False,
        train=None,
        test=None,
        keep: dict[str, Any] | None = None,
        rerun: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        from fedistill.data import load_dataset

        self.keep, self.rerun = keep, set(rerun)
        self.cfg = cfg
        self.out = Path(out)
        self.plots = self.out / "plots"
        self.progress = progress
        self.device = torch.device(cfg.device)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.train = train if train is not None else load_dataset(cfg.dataset, cfg.data_root, True)
        self.test = test if test is not None else load_dataset(cfg.dataset, cfg.data_root, False)
        self.rows = cfg.rows()
        self.pipelines = {cfg.pipeline(r).label: (r, cfg.pipeline(r)) for r in self.rows}
        self.names = cfg.row_names()
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        self.report: dict[str, Any] = {
            "schema": SCHEMA,
            "title": cfg.title,
            "command": command,
            "config_file": cfg.source,
            "config": cfg.to_dict(),
            "dataset": {
                "name": cfg.dataset,
                "train": len(self.train),
                "test": len(self.test),
                "num_classes": self.train.num_classes,
                "shape": list(self.train.info.shape),
                "data_root": cfg.data_root,
            },
            "machine": machine_facts(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "status": "running",
            "rows": [self._row_facts(n) for n in self.names],
            "cells": {n: {} for n in self.names},
            "plots": {},
            "seconds": 0.0,
        }

    # ------------------------------------------------------------------ bookkeeping

    def _row_facts(self, name: str) -> dict[str, Any]:
        if name == FEDAVG:
            p = self.cfg.poisoning
            return {
                "name": FEDAVG,
                "method": FEDAVG,
                "note": f"FedAvg on real data ({p.fedavg_rounds} rounds × {p.fedavg_local_epochs} "
                f"local epoch(s), lr {p.fedavg_lr}, batch {p.fedavg_batch_size}, "
                f"{self.cfg.budget.model}), no synthetic sets",
            }
        row, pcfg = self.pipelines[name]
        return {"name": name, "method": row.method, "pipeline": pcfg.to_dict()}

    def save(self) -> Path:
        self.report["seconds"] = round(time.perf_counter() - self.t0, 2)
        self.report["cpu_seconds"] = round(time.process_time() - self.c0, 2)
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "report.json"
        tmp = path.with_suffix(".json.tmp")
        report = dict(self.report)
        report["cells"] = {  # each row's cells in the table's order
            name: {k: cells[k] for k in CELLS if k in cells}
            for name, cells in self.report["cells"].items()
        }
        tmp.write_text(json.dumps(jsonable(report), indent=1) + "\n")
        os.replace(tmp, path)
        return path

    def cell(self, name: str, kind: str) -> dict[str, Any] | None:
        c = self.report["cells"].get(name, {}).get(kind)
        return c if c and c.get("status") == "ok" else None

    def kept(self, name: str, kind: str) -> dict[str, Any] | None:
        """The ``ok`` cell of the earlier report (``keep``) for this row and kind, when it was
        measured under the same dataset, seed, budget, row pipeline, attack section and ConvNet
        geometry, and its kind is not to be rerun; else None."""
        old = self.keep
        if old is None or kind in self.rerun:
            return None
        cell = old.get("cells", {}).get(name, {}).get(kind)
        if not cell or cell.get("status") != "ok":
            return None
        new_cfg, old_cfg = jsonable(self.report["config"]), old.get("config", {})
        section = CELL_SECTION.get(kind)
        old_geometry = (old.get("machine") or {}).get("convnet_geometry", "compact")
        same = (
            old_geometry == DEFAULT_GEOMETRY
            and old.get("dataset") == jsonable(self.report["dataset"])
            and all(old_cfg.get(k) == new_cfg.get(k) for k in ("dataset", "seed", "budget"))
            and (section is None or _measured(old_cfg, section) == _measured(new_cfg, section))
            and next((r for r in old.get("rows", []) if r["name"] == name), None)
            == jsonable(self._row_facts(name))
        )
        if not same:
            return None
        earlier = cell.get("kept_from") or {
            "started": old.get("started"),
            "git_commit": (old.get("machine") or {}).get("git_commit"),
        }
        return dict(cell, kept_from=earlier)

    def run_cell(self, name: str, kind: str, fn: Callable[[], Cell]) -> Cell:
        kept = self.kept(name, kind)
        if kept is not None:
            log.info("%s · %s: kept from the run of %s", name, kind, kept["kept_from"]["started"])
            self.report["cells"][name][kind] = kept
            self.save()
            return Cell("ok", summary=kept.get("summary", {}), result=kept.get("result"))
        log.info("%s · %s", name, kind)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            cell = fn()
        except Skip as exc:
            cell = Cell("skipped", reason=str(exc))
        except (KeyboardInterrupt, SystemExit):
            self.report["status"] = "interrupted"
            self.save()
            raise
        except Exception as exc:  # one failing cell must not lose the others
            log.warning("%s · %s failed: %s: %s", name, kind, type(exc).__name__, exc)
            cell = Cell(
                "failed",
                reason=f"{type(exc).__name__}: {exc}",
                traceback="".join(traceback.format_exc(limit=8)),
            )
        cell.seconds = round(time.perf_counter() - t0, 2)
        cell.cpu_seconds = round(time.process_time() - c0, 2)
        self.report["cells"][name][kind] = cell.to_dict()
        self.save()
        return cell

    # ------------------------------------------------------------------ the plan

    def plan(self) -> list[tuple[str, str, Callable[[], Cell]]]:
        """Every (row, cell kind, thunk) in run order: utility first, then attack by attack."""
        cfg = self.cfg
        steps: list[tuple[str, str, Callable[[], Cell]]] = []

        def add(kind: str, fn: Callable[[str], Cell], rows: list[str]) -> None:
            steps.extend((n, kind, (lambda n=n: fn(n))) for n in rows)

        def unplanned(kind: str, rows: list[str], reason: str) -> None:
            for n in rows:
                self.report["cells"][n][kind] = Cell("skipped", reason=reason).to_dict()

        add("utility", self.utility, self.names)
        for attack in ATTACKS:
            spec = getattr(cfg, attack)
            kinds = ATTACK_CELLS.get(attack, (attack,))
            if spec is None:
                for kind in kinds:
                    unplanned(
                        kind,
                        self.names,
                        f"not configured (no [attacks.{attack.replace('_', '-')}] section)",
                    )
                continue
            chosen = spec.rows if spec.rows is not None else self.names
            chosen = [n for n in self.names if n in chosen]
            others = [n for n in self.names if n not in chosen]
            for kind in kinds:
                unplanned(kind, others, f"not selected (attacks.{attack.replace('_', '-')}.rows)")
            if attack == "mia":
                if spec.set_level:
                    add("mia_set", self.mia_set, chosen)
                else:
                    unplanned("mia_set", chosen, "not configured (set-level = false)")
                add("mia", self.mia, chosen)
            elif attack == "backdoor":
                add("backdoor", self.backdoor, chosen)
            elif attack == "poisoning":
                add("poisoning", self.poisoning, chosen)
                if spec.defended:
                    add("poisoning_defended", self.poisoning_defended, chosen)
                else:
                    unplanned("poisoning_defended", chosen, "not configured (defended = false)")
            elif attack == "dp_audit":
                if spec.rows is None:  # the private rows, known once their utility ran
                    add("dp_audit", self.dp_audit_if_private, chosen)
                else:
                    add("dp_audit", self.dp_audit, chosen)
        return steps

    def run(self) -> dict[str, Any]:
        from fedistill.progress import progress_bar

        steps = self.plan()
        self.save()
        with progress_bar("audit", len(steps), self.progress) as bar:
            for name, kind, fn in steps:
                self.run_cell(name, kind, fn)
                bar.advance()
        self.report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        self.report["machine"]["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
        self.report["status"] = "complete"
        self.save()
        try:
            self.report["plots"] = write_plots(self.report, self.plots)
        except Exception as exc:
            log.warning("plots failed: %s: %s", type(exc).__name__, exc)
            self.report["plots"] = {"error": f"{type(exc).__name__}: {exc}"}
        self.save()
        (self.out / "report.md").write_text(render_markdown(self.report))
        return self.report


def run_matrix(
    cfg: AuditConfig,
    out: str | Path,
    *,
    command: str | None = None,
    progress: bool = False,
    train=None,
    test=None,
    keep: dict[str, Any] | None = None,
    rerun: set[str] | frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Run every cell of ``cfg``; write ``report.json``, ``report.md`` and ``plots/`` under
    ``out``. Returns the report (as written to report.json, before JSON conversion).

    ``keep``: an earlier report; its ``ok`` cells measured under the same dataset, seed,
    budget, row and attack section are kept (marked ``kept_from`` with that run's start and
    commit) instead of recomputed, except the cell kinds in ``rerun``."""
    run = MatrixRun(
        cfg, out, command=command, progress=progress, train=train, test=test, keep=keep, rerun=rerun
    )
    return run.run()
