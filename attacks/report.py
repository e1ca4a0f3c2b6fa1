"""The attack matrix: chosen pipelines × attacks on one dataset, written as one report.

A *row* is a pipeline (:class:`attacks.targets.PipelineConfig`): plain training on the real data
(``real``, the reference), or a registry method (``random``, ``dm``, ``dc``, ``dsa``, ``kip``,
``psg``, …) with its IPC and options, followed by training the final model on the synthetic set.
For every row the matrix measures, each in its own *cell*:

* ``utility``  — test accuracy of the model trained on the row's set of the whole training split,
  and ε/δ where the set's provenance records them;
* ``mia``      — membership inference against the whole pipeline (:func:`attacks.lira.run_mia`):
  the loss attack and LiRA (online, offline) with K shadow pipelines on a candidate pool; AUC,
  TPR at 1% and 0.1% FPR, pooled over every model as the target;
* ``backdoor`` — NAIVE through the row's method (or DOORPING, on the ``dm`` rows; plain poisoned
  training on the ``real`` row): attack success rate and clean accuracy (:mod:`attacks.backdoor`);
* ``poisoning`` / ``poisoning_defended`` — one-shot FedDM with the row's method, ``m`` of ``n``
  clients malicious: the global accuracy drop without and with the robust filter, and the filter's
  false-rejection rate on honest clients (:func:`attacks.poisoning.run_poisoning`). A ``fedavg``
  row runs the FedAvg baseline (:func:`fedistill.federated.simulate_fedavg`) under label flipping;
* ``dp_audit`` — for the rows whose sets carry an ε: the canary audit's empirical lower bound
  next to the accountant's ε (:func:`attacks.dp_audit.run_dp_audit`).

Cells run one at a time, attack by attack. A cell that fails is recorded with its reason and the
matrix goes on; ``report.json`` is rewritten after every cell, so an interrupted run still leaves
what it measured. :func:`load_config` reads the TOML configuration (``experiments/audit.toml``
documents every key); :func:`run_matrix` runs it and writes ``report.json``, ``report.md`` and the
plots.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import platform
import re
import subprocess
import time
import traceback
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attacks.targets import REAL, PipelineConfig
from fedistill.errors import ConfigError, UnknownNameError

log = logging.getLogger(__name__)

SCHEMA = "fedistill.attack-matrix/1"
FEDAVG = "fedavg"
ATTACKS = ("mia", "backdoor", "poisoning", "dp_audit")
CELLS = ("utility", "mia", "backdoor", "poisoning", "poisoning_defended", "dp_audit")
MIA_ATTACKS = ("loss", "lira_online", "lira_offline")


# =========================================================================== configuration


@dataclass
class BudgetConfig:
    """The shared budget: default IPC and distillation iterations, and how every final model is
    trained (the evaluation protocol's fields; a row may override them in its ``train`` table)."""

    ipc: int = 10
    distill_iterations: int | None = None  # default `iterations` of methods that have one
    model: str = "convnet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 300
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    dsa: bool = True
    dsa_strategy: str | None = None

    def train_fields(self) -> dict[str, Any]:
        return {k: copy.deepcopy(getattr(self, k)) for k in TRAIN_FIELDS}

    def validate(self) -> None:
        if self.ipc < 1:
            raise ConfigError(f"budget: ipc must be ≥ 1, got {self.ipc}")
        if self.distill_iterations is not None and self.distill_iterations < 0:
            raise ConfigError("budget: distill-iterations must be ≥ 0")


TRAIN_FIELDS = (
    "model",
    "model_kwargs",
    "epochs",
    "lr",
    "momentum",
    "weight_decay",
    "batch_size",
    "dsa",
    "dsa_strategy",
)


@dataclass
class RowSpec:
    """One ``[[methods]]`` entry: ``method``, optional ``name`` and ``ipc``, a ``train`` table
    overriding the budget's training fields, and every other key a method option."""

    method: str
    name: str | None = None
    ipc: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


@dataclass
class MIASpec:
    num_shadows: int = 16
    pool_size: int | None = None  # None: the whole training split is the candidate pool
    shift: int = 0  # LiRA query views: shifts by this many pixels (0: the image only)
    leave_one_out: bool = True  # pool every model as the target (more trials at low FPR)
    rows: list[str] | None = None  # None: every pipeline row

    def validate(self) -> None:
        if self.num_shadows < 2:
            raise ConfigError("attacks.mia: num-shadows must be ≥ 2")
        if self.pool_size is not None and self.pool_size < 4:
            raise ConfigError("attacks.mia: pool-size must be ≥ 4")


@dataclass
class BackdoorSpec:
    kind: str = "naive"  # "naive" on every row, or "doorping" (the dm rows)
    p: float = 0.1
    target: int = 0
    baseline: bool = True  # also the ASR of the clean pipeline with the same trigger
    doorping: dict[str, Any] = field(default_factory=dict)  # DoorpingConfig overrides
    rows: list[str] | None = None

    def validate(self) -> None:
        if self.kind not in ("naive", "doorping"):
            raise UnknownNameError(
                f"attacks.backdoor: unknown kind '{self.kind}'; choose naive or doorping"
            )
        if not 0.0 < self.p <= 1.0:
            raise ConfigError(f"attacks.backdoor: p must be in (0, 1], got {self.p}")
        if self.target < 0:
            raise ConfigError("attacks.backdoor: target must be a class id ≥ 0")
        from attacks.backdoor import DoorpingConfig

        _make(DoorpingConfig, self.doorping, "attacks.backdoor.doorping").validate()


@dataclass
class PoisoningSpec:
    attack: str = "label_flip"
    m: int = 1
    n: int = 5
    defended: bool = True  # also run with the robust filter
    partitioner: str = "dirichlet"
    alpha: float = 0.5
    scale: float = 10.0  # the "scale" attack's factor
    source: int = 1  # the "pull" attack's classes
    target: int = 7
    filter: dict[str, Any] = field(default_factory=dict)  # FilterConfig overrides
    fedavg: bool = True  # add the FedAvg baseline row
    fedavg_rounds: int = 10
    fedavg_local_epochs: int = 1
    fedavg_lr: float = 0.01
    fedavg_batch_size: int = 32
    rows: list[str] | None = None

    def validate(self) -> None:
        from attacks.poisoning import ATTACKS as POISONINGS
        from fedistill.robust import FilterConfig

        if self.attack not in POISONINGS:
            raise UnknownNameError(
                f"attacks.poisoning: unknown attack '{self.attack}'; "
                f"choose one of {', '.join(POISONINGS)}"
            )
        if not 0 <= self.m <= self.n or self.n < 2:
            raise ConfigError(
                f"attacks.poisoning: need 0 ≤ m ≤ n and n ≥ 2 (m={self.m}, n={self.n})"
            )
        if self.fedavg_rounds < 1 or self.fedavg_local_epochs < 1:
            raise ConfigError("attacks.poisoning: fedavg rounds and local epochs must be ≥ 1")
        _make(FilterConfig, self.filter, "attacks.poisoning.filter")


@dataclass
class DPAuditSpec:
    num_runs: int = 32
    base_size: int = 200
    canaries_per_run: int = 8
    canary: str = "mislabel"
    delta: float | None = None  # None: the accountant's δ
    confidence: float = 0.95
    rows: list[str] | None = None  # None: the rows whose sets carry an ε

    def validate(self) -> None:
        from attacks.dp_audit import CANARY_KINDS

        if self.num_runs < 4 or self.canaries_per_run < 1 or self.base_size < 1:
            raise ConfigError("attacks.dp-audit: need num-runs ≥ 4, canaries-per-run ≥ 1")
        if self.canary not in CANARY_KINDS:
            raise UnknownNameError(
                f"attacks.dp-audit: unknown canary '{self.canary}'; "
                f"choose one of {', '.join(CANARY_KINDS)}"
            )
        if not 0 < self.confidence < 1:
            raise ConfigError("attacks.dp-audit: confidence must be in (0, 1)")


SPECS: dict[str, type] = {
    "mia": MIASpec,
    "backdoor": BackdoorSpec,
    "poisoning": PoisoningSpec,
    "dp_audit": DPAuditSpec,
}


@dataclass
class AuditConfig:
    """The whole matrix (see ``experiments/audit.toml`` for every key)."""

    dataset: str = "digits"
    data_root: str | None = None
    seed: int = 0
    device: str = "cpu"
    threads: int = 0  # torch threads (0: torch's default)
    reference: bool = True  # add the `real` row unless [[methods]] has one
    title: str | None = None
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    methods: list[RowSpec] = field(default_factory=list)
    mia: MIASpec | None = None
    backdoor: BackdoorSpec | None = None
    poisoning: PoisoningSpec | None = None
    dp_audit: DPAuditSpec | None = None
    source: str | None = None  # the file it was read from
    quick: bool = False

    # ------------------------------------------------------------------ the rows

    def rows(self) -> list[RowSpec]:
        """The pipeline rows, the reference first (not the fedavg row)."""
        rows = list(self.methods)
        if self.reference and not any(r.method == REAL for r in rows):
            rows.insert(0, RowSpec(REAL))
        return rows

    def pipeline(self, row: RowSpec) -> PipelineConfig:
        """The row's pipeline: budget defaults, then the row's own values. Its name is the
        entry's ``name``, else the method's name where only one row uses that method."""
        name = row.name
        if not name and sum(r.method == row.method for r in self.rows()) == 1:
            name = row.method
        train = self.budget.train_fields() | copy.deepcopy(row.train)
        opts = dict(row.options)
        if (
            row.method != REAL
            and self.budget.distill_iterations is not None
            and "iterations" not in opts
            and _has_field(row.method, "iterations")
        ):
            opts["iterations"] = self.budget.distill_iterations
        return PipelineConfig(
            method=row.method,
            ipc=row.ipc if row.ipc is not None else self.budget.ipc,
            method_options=opts if row.method != REAL else {},
            name=name or None,
            **train,
        )

    def row_names(self) -> list[str]:
        names = [self.pipeline(r).label for r in self.rows()]
        if self.poisoning is not None and self.poisoning.fedavg:
            names.append(FEDAVG)
        return names

    def validate(self) -> None:
        from fedistill.data import DATASETS

        if self.dataset not in DATASETS:
            raise UnknownNameError(
                f"unknown dataset '{self.dataset}'; choose one of {', '.join(DATASETS)}"
            )
        self.budget.validate()
        if not self.row_names():
            raise ConfigError("no rows: list at least one [[methods]] entry or keep reference")
        for row in self.rows():
            try:
                self.pipeline(row).validate()
            except UnknownNameError as exc:
                raise UnknownNameError(f"methods: {exc}") from None
            except ConfigError as exc:
                raise ConfigError(f"methods ({row.name or row.method}): {exc}") from None
        names = self.row_names()
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"row names must be unique; give a `name` to: {', '.join(dup)}")
        for attack in ATTACKS:
            spec = getattr(self, attack)
            if spec is None:
                continue
            spec.validate()
            unknown = sorted(set(spec.rows or []) - set(names))
            if unknown:
                raise UnknownNameError(
                    f"attacks.{attack}: rows {', '.join(unknown)} are not rows of the matrix "
                    f"({', '.join(names)})"
                )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _has_field(method: str, name: str) -> bool:
    from fedistill.distill import get_method

    cfg = get_method(method).make_config()
    return dataclasses.is_dataclass(cfg) and name in {f.name for f in dataclasses.fields(cfg)}


# --------------------------------------------------------------------------- TOML → dataclasses


def _key(k: str) -> str:
    return k.replace("-", "_")


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        (inner,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_type_ok(v, inner) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    return True


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _make(cls: type, table: dict[str, Any], where: str) -> Any:
    """``cls(**table)`` with hyphenated keys accepted, unknown keys and wrong types refused."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table, got {type(table).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for raw, value in table.items():
        key = _key(raw)
        if key not in names:
            known = ", ".join(n.replace("_", "-") for n in names)
            raise ConfigError(f"{where}: unknown key '{raw}' (known: {known})")
        if not _type_ok(value, hints[key]):
            raise ConfigError(f"{where}: '{raw}' must be {_type_name(hints[key])}, got {value!r}")
        if hints[key] is float and isinstance(value, int):
            value = float(value)
        kwargs[key] = value
    return cls(**kwargs)


def _row(entry: Any, i: int) -> RowSpec:
    where = f"methods[{i}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a table")
    entry = {_key(k): v for k, v in entry.items()}
    if "method" not in entry or not isinstance(entry["method"], str):
        raise ConfigError(f"{where}: 'method' (a registry name or 'real') is required")
    method = entry.pop("method")
    name = entry.pop("name", None)
    ipc = entry.pop("ipc", None)
    train = entry.pop("train", {})
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ConfigError(f"{where}: 'name' must be a non-empty string")
    if ipc is not None and (not isinstance(ipc, int) or isinstance(ipc, bool) or ipc < 1):
        raise ConfigError(f"{where}: 'ipc' must be a positive integer, got {ipc!r}")
    if not isinstance(train, dict):
        raise ConfigError(f"{where}: 'train' must be a table of training fields")
    train = {_key(k): v for k, v in train.items()}
    bad = sorted(set(train) - set(TRAIN_FIELDS))
    if bad:
        raise ConfigError(
            f"{where}.train: unknown key(s) {', '.join(bad)} (known: {', '.join(TRAIN_FIELDS)})"
        )
    _make(BudgetConfig, train, f"{where}.train")  # type check
    misplaced = sorted(set(entry) & (TOP_KEYS - {"methods", "budget"}))
    if misplaced:
        raise ConfigError(
            f"{where}: '{misplaced[0].replace('_', '-')}' is a top-level key; in TOML every key "
            "after a [[methods]] header belongs to that entry: move it above the first table"
        )
    if method != REAL:
        from fedistill.distill import get_method

        try:
            get_method(method)
        except UnknownNameError as exc:
            raise UnknownNameError(f"{where}: {exc}") from None
    return RowSpec(method, name, ipc, entry, train)


TOP_KEYS = {f.name for f in dataclasses.fields(AuditConfig)} - {"source", "quick"}


def config_from_dict(doc: dict[str, Any], source: str | None = None) -> AuditConfig:
    """Validate a parsed TOML document into an :class:`AuditConfig` (ConfigError on any fault)."""
    doc = dict(doc)
    budget = _make(BudgetConfig, doc.pop("budget", {}), "budget")
    methods = doc.pop("methods", [])
    if not isinstance(methods, list):
        raise ConfigError("'methods' must be an array of tables ([[methods]])")
    rows = [_row(e, i) for i, e in enumerate(methods)]
    attacks = doc.pop("attacks", {})
    if not isinstance(attacks, dict):
        raise ConfigError("'attacks' must be a table ([attacks.mia], [attacks.backdoor], …)")
    specs = {}
    for raw, table in attacks.items():
        key = _key(raw)
        if key not in SPECS:
            raise UnknownNameError(
                f"unknown attack '{raw}'; choose one of {', '.join(a.replace('_', '-') for a in ATTACKS)}"
            )
        specs[key] = _make(SPECS[key], table, f"attacks.{raw}")
    top = {}
    for raw, value in doc.items():
        key = _key(raw)
        if key not in TOP_KEYS - {"budget", "methods", *ATTACKS}:
            known = "dataset, data-root, seed, device, threads, reference, title, budget, methods, attacks"
            raise ConfigError(f"unknown top-level key '{raw}' (known: {known})")
        top[key] = value
    cfg = _make(AuditConfig, {k.replace("_", "-"): v for k, v in top.items()}, "config")
    cfg.budget, cfg.methods, cfg.source = budget, rows, source
    for key, spec in specs.items():
        setattr(cfg, key, spec)
    if cfg.data_root == "":
        cfg.data_root = None
    cfg.validate()
    return cfg


def load_config(path: str | Path) -> AuditConfig:
    """Read and validate a TOML audit configuration.

    A relative ``data-root`` is taken relative to the file's folder (so a config works from any
    working directory). Raises ConfigError for a missing or unreadable file, invalid TOML,
    unknown keys or bad values, and UnknownNameError for unknown methods, attacks or datasets.
    """
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    cfg = config_from_dict(doc, source=str(path))
    if cfg.data_root and not Path(cfg.data_root).is_absolute():
        cfg.data_root = str((path.resolve().parent / cfg.data_root).resolve())
    return cfg


def select(
    cfg: AuditConfig,
    *,
    rows: list[str] | None = None,
    attacks: list[str] | None = None,
) -> AuditConfig:
    """A copy keeping only the named rows (names, or method names) and attacks."""
    cfg = copy.deepcopy(cfg)
    if rows is not None:
        all_rows = cfg.rows()
        labels = {cfg.pipeline(r).label: r for r in all_rows}
        wanted = set(rows)
        known = set(labels) | {r.method for r in all_rows}
        if cfg.poisoning is not None and cfg.poisoning.fedavg:
            known.add(FEDAVG)
        unknown = sorted(wanted - known)
        if unknown:
            raise UnknownNameError(
                f"unknown method(s) {', '.join(unknown)}; this config's rows are "
                f"{', '.join(cfg.row_names())}"
            )
        cfg.methods = [
            dataclasses.replace(r, name=lab)  # keep each row's name as it was
            for lab, r in labels.items()
            if lab in wanted or r.method in wanted
        ]
        cfg.reference = False
        if cfg.poisoning is not None:
            cfg.poisoning.fedavg = cfg.poisoning.fedavg and FEDAVG in wanted
    if attacks is not None:
        wanted = {_key(a) for a in attacks}
        unknown = sorted(wanted - set(ATTACKS))
        if unknown:
            raise UnknownNameError(
                f"unknown attack(s) {', '.join(unknown)}; choose from {', '.join(ATTACKS)}"
            )
        for a in ATTACKS:
            if a not in wanted:
                setattr(cfg, a, None)
    names = set(cfg.row_names())
    for a in ATTACKS:
        spec = getattr(cfg, a)
        if spec is not None and spec.rows is not None:
            spec.rows = [r for r in spec.rows if r in names]
    cfg.validate()
    return cfg


def quick(cfg: AuditConfig) -> AuditConfig:
    """A reduced copy for a first try: 2 shadows on ≤ 400 candidates, ≤ 1/5 of the distillation
    iterations (at least 1), ≤ 50 training epochs, ≤ 3 FedAvg rounds, ≤ 8 audit runs."""
    cfg = copy.deepcopy(cfg)
    cfg.quick = True
    b = cfg.budget
    b.epochs = min(b.epochs, 50)
    if b.distill_iterations is not None:
        b.distill_iterations = max(1, b.distill_iterations // 5)
    for row in cfg.methods:
        if isinstance(row.options.get("iterations"), int):
            row.options["iterations"] = max(1, row.options["iterations"] // 5)
        if isinstance(row.train.get("epochs"), int):
            row.train["epochs"] = min(row.train["epochs"], 50)
    if cfg.mia is not None:
        cfg.mia.num_shadows = min(cfg.mia.num_shadows, 2)
        cfg.mia.pool_size = min(cfg.mia.pool_size or 400, 400)
    if cfg.backdoor is not None and cfg.backdoor.kind == "doorping":
        d = cfg.backdoor.doorping
        d["epochs"] = min(int(d.get("epochs", 10)), 2)
        d["dm_iterations"] = min(int(d.get("dm_iterations", 20)), 5)
    if cfg.poisoning is not None:
        cfg.poisoning.fedavg_rounds = min(cfg.poisoning.fedavg_rounds, 3)
    if cfg.dp_audit is not None:
        cfg.dp_audit.num_runs = min(cfg.dp_audit.num_runs, 8)
        cfg.dp_audit.base_size = min(cfg.dp_audit.base_size, 100)
    return cfg


# =========================================================================== the runner


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


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    if isinstance(x, Path):
        return str(x)
    if x is None or isinstance(x, bool | int | float | str):
        return x
    return str(x)


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
    }


class MatrixRun:
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
    ) -> None:
        from fedistill.data import load_dataset

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
        self.models: dict[str, torch.nn.Module] = {}  # utility models (naive backdoor baseline)
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
        tmp.write_text(json.dumps(_jsonable(report), indent=1) + "\n")
        os.replace(tmp, path)
        return path

    def cell(self, name: str, kind: str) -> dict[str, Any] | None:
        c = self.report["cells"].get(name, {}).get(kind)
        return c if c and c.get("status") == "ok" else None

    def run_cell(self, name: str, kind: str, fn: Callable[[], Cell]) -> Cell:
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
            kinds = ("poisoning", "poisoning_defended") if attack == "poisoning" else (attack,)
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
        self.models[name] = model
        priv = (syn.privacy if syn is not None else None) or {}
        summary = {
            "accuracy": acc,
            "epsilon": _finite(priv.get("epsilon")),
            "delta": _finite(priv.get("delta")),
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
        from attacks.lira import LiRAConfig, run_mia

        _row, pcfg = self._pipeline(name)
        spec = self.cfg.mia
        lira = LiRAConfig(
            num_shadows=spec.num_shadows, shift=spec.shift, leave_one_out=spec.leave_one_out
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
        summary["target_test_accuracy"] = out["target"].get("test_accuracy")
        budget = {
            "num_shadows": spec.num_shadows,
            "pool_size": out["pool_size"],
            "members": out["target"]["members"],
            "nonmembers": out["target"]["nonmembers"],
            "lira": out["lira"],
            "target": out["target"]["budget"],
        }
        return Cell("ok", summary=summary, budget=budget, result=out)

    # ------------------------------------------------------------------ backdoor

    def backdoor(self, name: str) -> Cell:
        from attacks.backdoor import attack_success_rate, run_backdoor, run_real_backdoor
        from attacks.triggers import white_trigger

        row, pcfg = self._pipeline(name)
        spec = self.cfg.backdoor
        if spec.target >= self.train.num_classes:
            raise ConfigError(f"backdoor target {spec.target} is not a class of the dataset")
        ecfg = self._eval_cfg(pcfg)
        common = dict(p=spec.p, target=spec.target, eval_cfg=ecfg, seed=self.cfg.seed)
        if row.method == REAL:
            out = run_real_backdoor(self.train, self.test, device=self.device, **common)
            kind = "naive (poisoned real training)"
        elif spec.kind == "naive":
            free = name in self.models
            out = run_backdoor(
                self.train,
                self.test,
                kind="naive",
                method=row.method,
                ipc=pcfg.ipc,
                method_overrides=pcfg.method_options,
                baseline=spec.baseline and not free,
                device=self.device,
                **common,
            )
            if spec.baseline and free:  # the clean pipeline is the utility cell's model
                asr = attack_success_rate(
                    self.models[name],
                    self.test,
                    white_trigger(self.train.info),
                    spec.target,
                    self.device,
                )
                out["baseline"] = {
                    "asr": asr,
                    "clean_accuracy": self.report["cells"][name]["utility"]["summary"]["accuracy"],
                    "source": "the utility cell's model (same pipeline without poisoning)",
                }
            kind = "naive"
        else:
            if row.method != "dm":
                raise Skip(
                    "not applicable: DOORPING optimises its trigger in its own DM loop "
                    "(measured on the dm rows)"
                )
            dcfg = _doorping_config(pcfg.method_options, spec.doorping, pcfg.eval_config())
            out = run_backdoor(
                self.train,
                self.test,
                kind="doorping",
                ipc=pcfg.ipc,
                doorping_config=dcfg,
                baseline=spec.baseline,
                device=self.device,
                **common,
            )
            kind = "doorping"
        summary = {
            "kind": kind,
            "asr": out["attacked"]["asr"],
            "clean_accuracy": out["attacked"]["clean_accuracy"],
            "baseline_asr": (out.get("baseline") or {}).get("asr"),
            "poisoned": out.get("poisoned"),
        }
        budget = {
            "kind": kind,
            "p": spec.p,
            "target": spec.target,
            "poisoned": out.get("poisoned"),
            "method": out.get("method", REAL),
            "ipc": None if row.method == REAL else pcfg.ipc,
            "method_options": pcfg.method_options,
            "trigger": out.get("trigger"),
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
            filter_config=_make(FilterConfig, p.filter, "attacks.poisoning.filter"),
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
            raise Skip(
                "not applicable: the robust filter scores synthetic sets; FedAvg clients "
                "send model updates"
            )
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

    # ------------------------------------------------------------------ DP audit

    def dp_audit_if_private(self, name: str) -> Cell:
        if name == FEDAVG:
            raise Skip("not applicable: FedAvg here has no DP mechanism")
        util = self.cell(name, "utility")
        row, _ = self._pipeline(name)
        if util is not None:
            private = util["summary"].get("epsilon") is not None
        else:
            private = row.method != REAL and _has_field(row.method, "epsilon")
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
            "claimed_epsilon": out["claimed_epsilon"],
            "consistent": out["consistent"],
            "epsilon_lb_ceiling": out["epsilon_lb_ceiling"],
            "delta": out["delta"],
        }
        budget = {
            "num_runs": spec.num_runs,
            "runs_for_bound": out["runs_for_bound"],
            "canary": out["canary"],
            "confidence": spec.confidence,
            "delta": out["delta"],
            "pipeline": out["budget"],
        }
        return Cell("ok", summary=summary, budget=budget, result=out)


def _doorping_config(options: dict[str, Any], overrides: dict[str, Any], ecfg) -> Any:
    """DOORPING's DM loop set up like the dm row (init, lr, batch, embedding network)."""
    from attacks.backdoor import DoorpingConfig

    base: dict[str, Any] = {}
    for k in ("init", "lr_img", "batch_real", "dsa", "dsa_strategy"):
        if k in options:
            base[k] = options[k]
    kw = {k: options[k] for k in ("width", "depth", "norm") if k in options}
    if kw:
        base["model_kwargs"] = kw
    if "model" in options:
        base["model"] = options["model"]
    if "iterations" in options and "dm_iterations" not in overrides:
        epochs = int(overrides.get("epochs", DoorpingConfig.epochs))
        base["dm_iterations"] = max(1, math.ceil(options["iterations"] / epochs))
    return _make(DoorpingConfig, {**base, **overrides}, "attacks.backdoor.doorping")


def run_matrix(
    cfg: AuditConfig,
    out: str | Path,
    *,
    command: str | None = None,
    progress: bool = False,
    train=None,
    test=None,
) -> dict[str, Any]:
    """Run every cell of ``cfg``; write ``report.json``, ``report.md`` and ``plots/`` under
    ``out``. Returns the report (as written to report.json, before JSON conversion)."""
    run = MatrixRun(cfg, out, command=command, progress=progress, train=train, test=test)
    return run.run()


# =========================================================================== report.md


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.{digits}f}"


def _pct(x: Any) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _eps(x: Any) -> str:
    return "—" if x is None else f"{x:.3g}"


def _summary(report: dict[str, Any], name: str, kind: str) -> dict[str, Any] | None:
    c = report["cells"].get(name, {}).get(kind)
    return c.get("summary") if c and c.get("status") == "ok" else None


COLUMNS = (
    ("ε", "utility"),
    ("utility acc %", "utility"),
    ("MIA AUC loss", "mia"),
    ("MIA AUC LiRA", "mia"),
    ("TPR@0.1%FPR loss", "mia"),
    ("TPR@0.1%FPR LiRA", "mia"),
    ("backdoor ASR % (clean-model ASR)", "backdoor"),
    ("backdoor clean acc %", "backdoor"),
    ("poison acc drop (pts)", "poisoning"),
    ("drop with defence (pts)", "poisoning_defended"),
    ("defence FRR", "poisoning_defended"),
    ("DP audit ε_lb (accountant ε)", "dp_audit"),
)


def _tpr(m: dict[str, Any]) -> str:
    v = _fmt(m["tpr@0.1%fpr"])
    return v if m.get("tpr@0.1%fpr_resolved", True) else v + "*"


def _row_cells(report: dict[str, Any], name: str) -> list[str]:
    s = lambda kind: _summary(report, name, kind)  # noqa: E731
    u, mia, bd = s("utility"), s("mia"), s("backdoor")
    po, pd, dp = s("poisoning"), s("poisoning_defended"), s("dp_audit")
    eps = _eps(u and u.get("epsilon"))
    if eps == "—" and u and u.get("rho"):
        eps = f"— (KIP-ρ {u['rho']:g})"  # ρ is a privacy knob without an ε
    cells = [eps, _pct(u and u.get("accuracy"))]
    if mia:
        cells += [
            _fmt(mia["loss"]["auc"]),
            _fmt(mia["lira_online"]["auc"]),
            _tpr(mia["loss"]),
            _tpr(mia["lira_online"]),
        ]
    else:
        cells += ["—"] * 4
    if bd:
        base = bd.get("baseline_asr")
        cells += [
            _pct(bd["asr"]) + (f" ({_pct(base)})" if base is not None else ""),
            _pct(bd["clean_accuracy"]),
        ]
    else:
        cells += ["—"] * 2
    cells.append(_pct(po["accuracy_drop"]) if po else "—")
    cells += [_pct(pd["accuracy_drop"]), _fmt(pd["false_rejection_rate"], 2)] if pd else ["—"] * 2
    if dp:
        flag = "" if dp["consistent"] else " ⚠ above the claim"
        cells.append(f"{_fmt(dp['epsilon_lb'], 2)} ({_eps(dp['claimed_epsilon'])}){flag}")
    else:
        cells.append("—")
    return cells


def matrix_table(report: dict[str, Any]) -> str:
    """The matrix as a markdown table: a row per pipeline, "—" where a cell is missing."""
    head = ["pipeline", *[c for c, _ in COLUMNS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["rows"]:
        lines.append(
            "| " + " | ".join([f"`{row['name']}`", *_row_cells(report, row["name"])]) + " |"
        )
    return "\n".join(lines)


def _describe_pipeline(report: dict[str, Any], name: str) -> str:
    row = next(r for r in report["rows"] if r["name"] == name)
    if row["method"] == FEDAVG:
        return row["note"]
    p = row["pipeline"]
    if row["method"] == REAL:
        src = "plain training on the real data"
    else:
        opts = ", ".join(f"{k}={v}" for k, v in sorted(p["method_options"].items()))
        src = f"{p['method']} IPC {p['ipc']}" + (f" ({opts})" if opts else "")
    return src


def _train_protocol(p: dict[str, Any]) -> str:
    kw = ", ".join(f"{k}={v}" for k, v in sorted((p.get("model_kwargs") or {}).items()))
    model = p["model"] + (f"({kw})" if kw else "")
    return (
        f"{model}, {p['epochs']} epochs, SGD lr {p['lr']} (÷10 at half), momentum {p['momentum']}, "
        f"weight decay {p['weight_decay']}, batch {p['batch_size']}, DSA {'on' if p['dsa'] else 'off'}"
    )


def budgets_section(report: dict[str, Any]) -> list[str]:
    cfg = report["config"]
    lines = ["#### Budgets", ""]
    protocols = {}
    for row in report["rows"]:
        if row["method"] != FEDAVG:
            protocols.setdefault(_train_protocol(row["pipeline"]), []).append(row["name"])
    for proto, names in protocols.items():
        who = "every row" if len(protocols) == 1 else ", ".join(f"`{n}`" for n in names)
        lines.append(f"- **Final model** ({who}): {proto}; one model per cell.")
    for row in report["rows"]:
        lines.append(f"- `{row['name']}`: {_describe_pipeline(report, row['name'])}.")
    d = report["dataset"]
    lines.append(
        f"- **Utility**: the row's set distilled from all {d['train']} training images, one "
        f"model, test accuracy on the {d['test']} test images; ε from the set's provenance."
    )
    mia = cfg.get("mia")
    if mia:
        ex = _first_ok(report, "mia")
        if ex:
            b, s = ex["budget"], ex["summary"]
            n_out = s["lira_online"]["n_out"]
            lines.append(
                f"- **MIA**: K = {b['num_shadows']} shadow pipelines on a pool of "
                f"{b['pool_size']} training images ({b['members']} members per model), each "
                f"repeating the row's whole pipeline; AUC and TPR pooled over all "
                f"{b['num_shadows'] + 1} models as targets ({n_out} non-member trials, FPR "
                f"resolution {1 / n_out:.2g}; * marks a TPR below that resolution, read at FPR 0). "
                f"LiRA = online, {'fixed' if b['lira'].get('fixed_variance') else 'per-example'} "
                f"variance, {'shift ' + str(b['lira']['shift']) if b['lira']['shift'] else 'no'} "
                "query augmentation; offline LiRA and TPR@1%FPR in report.json."
            )
        else:
            lines.append(
                f"- **MIA**: K = {mia['num_shadows']}, pool {mia['pool_size']} (no cell succeeded)."
            )
    bd = cfg.get("backdoor")
    if bd:
        ex = _first_ok(report, "backdoor")
        trig = ex["budget"].get("trigger") if ex else None
        patch = f"{trig['pixels']}-pixel white patch (bottom-right)" if trig else "patch"
        lines.append(
            f"- **Backdoor**: {bd['kind'].upper()}, p = {bd['p']} of the training images stamped "
            f"with a {patch} and relabelled to class {bd['target']} before distillation (the "
            f"`real` row trains on the poisoned real data); ASR = triggered non-target test "
            f"images classified as {bd['target']}; in parentheses the ASR of the clean pipeline's "
            "model with the same trigger."
        )
    po = cfg.get("poisoning")
    if po:
        lines.append(
            f"- **Poisoning**: `{po['attack']}` by {po['m']} of {po['n']} clients "
            f"({po['partitioner']}, α = {po['alpha']}), one-shot FedDM with each row's method "
            f"and IPC; drop = clean federation's global test accuracy − attacked (points). "
            f"Defence: the robust filter (fedistill.robust, pairwise cross-scoring + feature "
            f"statistics); FRR = share of honest clients it rejected."
            + (
                f" `fedavg`: FedAvg {po['fedavg_rounds']} rounds on the same partitions "
                "(the filter does not apply to model updates)."
                if po.get("fedavg")
                else " No FedAvg row (disabled in the config)."
            )
        )
    dp = cfg.get("dp_audit")
    if dp:
        lines.append(
            f"- **DP audit**: {dp['num_runs']} runs of the pipeline on {dp['base_size']} base "
            f"images + a random half of {dp['canaries_per_run']} {dp['canary']} canaries; "
            f"threshold chosen on half the runs, ε lower bound from Clopper–Pearson "
            f"({dp['confidence']:.0%}) bounds on FPR/FNR of the other half; beside it the "
            "accountant's ε. Several canaries per run share models, so the interval is heuristic."
        )
    return lines


def _first_ok(report: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cells in report["cells"].values():
        c = cells.get(kind)
        if c and c.get("status") == "ok":
            return c
    return None


def missing_section(report: dict[str, Any]) -> list[str]:
    """Every cell that is not a number, with its reason (cells sharing a reason together)."""
    failed, reasons = [], {}
    for name, cells in report["cells"].items():
        for kind, c in cells.items():
            if c.get("status") == "failed":
                failed.append(f"- `{name}` · {kind}: **failed** — {c.get('reason', '')}")
            elif c.get("status") != "ok":
                reasons.setdefault((kind, c.get("reason", "")), []).append(name)
    lines = list(failed)
    for (kind, reason), names in reasons.items():
        who = ", ".join(f"`{n}`" for n in names)
        lines.append(f"- {kind} of {who}: {reason}")
    return ["#### Missing cells", "", *lines, ""] if lines else []


def timings_section(report: dict[str, Any]) -> list[str]:
    """Wall-clock seconds per cell, CPU seconds of this process in parentheses."""
    kinds = [k for k in CELLS if any(k in c for c in report["cells"].values())]
    head = ["pipeline", *kinds, "total"]
    lines = [
        "#### Timings",
        "",
        "Wall-clock seconds (this process's CPU seconds, all threads).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]

    def fmt(wall: float | None, cpu: float | None) -> str:
        return "—" if wall is None else f"{wall:.0f} ({cpu or 0:.0f})"

    for name, cells in report["cells"].items():
        vals = [
            (cells[k]["seconds"], cells[k].get("cpu_seconds"))
            if k in cells and cells[k]["status"] != "skipped"
            else (None, None)
            for k in kinds
        ]
        wall = sum(w for w, _ in vals if w is not None)
        cpu = sum(c for _, c in vals if c is not None)
        lines.append(
            "| " + " | ".join([f"`{name}`", *[fmt(*v) for v in vals], fmt(wall, cpu)]) + " |"
        )
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: the matrix, its budgets, the command, missing cells, timings, machine, plots.

    Written to be embedded as it is (experiments/tables.py puts it into the README under its
    own heading): no top-level heading, sections at level 4, plots named by path, not linked
    (a relative link cannot be right both beside report.json and in the README).
    """
    d = report["dataset"]
    m = report["machine"]
    title = report.get("title") or f"Attack matrix on {d['name']}"
    lines = [f"**{title}**", ""]
    if report.get("config", {}).get("quick"):
        lines += ["**Quick run** (`--quick`: reduced budgets, for trying the pipeline).", ""]
    lines += [
        f"Dataset `{d['name']}`: {d['train']} training / {d['test']} test images, "
        f"{d['num_classes']} classes, {'×'.join(map(str, d['shape']))}.",
        "",
        matrix_table(report),
        "",
        "Accuracies and drops in % / points; AUC and TPR as fractions; — = not measured "
        "(reasons below and in report.json).",
        "",
        *budgets_section(report),
        "",
    ]
    if report.get("command"):
        lines += ["Produced by:", "", "```bash", report["command"], "```", ""]
    lines += missing_section(report)
    lines += [*timings_section(report), ""]
    lines += [
        f"Total {report['seconds'] / 60:.1f} min wall, "
        f"{report.get('cpu_seconds', 0) / 60:.1f} min CPU, on {m['processor']} ({m['cpus']} CPUs, "
        f"{m['torch_threads']} torch threads; 1-min load average {m['load_average_1m_at_start']} "
        f"at start, {m.get('load_average_1m_at_end', '?')} at end — timings under load are "
        f"noisy), torch {m['torch']}, commit {m.get('git_commit') or '?'}, "
        f"{report['started']}.",
        "",
    ]
    plots = report.get("plots") or {}
    if plots and "error" not in plots:
        folder = _display_path(Path(next(iter(plots.values()))).parent)
        lines += ["#### Plots", "", f"In `{folder}/`:", ""]
        for label, path in plots.items():
            lines.append(f"- `{Path(path).name}`: {label}")
        lines.append("")
    return "\n".join(lines)


def _display_path(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it, else as it is."""
    repo = Path(__file__).resolve().parents[1]
    try:
        return str(path.resolve().relative_to(repo))
    except ValueError:
        return str(path)


# =========================================================================== plots


def write_plots(report: dict[str, Any], folder: str | Path) -> dict[str, str]:
    """The LiRA log-log ROC of every row, backdoor ASR / clean accuracy, poisoning drops."""
    folder = Path(folder)
    out: dict[str, str] = {}
    p = plot_lira_rocs(report, folder / "roc_lira.png")
    if p:
        out["LiRA (online) ROC per pipeline, log-log"] = str(p)
    for name, cells in report["cells"].items():
        c = cells.get("mia")
        if c and c.get("status") == "ok" and c["result"].get("plot"):
            out[f"MIA ROC of `{name}` (loss, LiRA online/offline)"] = c["result"]["plot"]
    p = plot_backdoor(report, folder / "backdoor.png")
    if p:
        out["backdoor ASR and clean accuracy"] = str(p)
    p = plot_poisoning(report, folder / "poisoning.png")
    if p:
        out["poisoning accuracy drop without / with the defence"] = str(p)
    return out


def plot_lira_rocs(report: dict[str, Any], path: Path) -> Path | None:
    from attacks.metrics import RocCurve, plot_roc

    curves = {}
    for name, cells in report["cells"].items():
        c = cells.get("mia")
        if not c or c.get("status") != "ok":
            continue
        measured = c["summary"]["measured_on"]
        m = c["result"][measured]["lira_online"]
        roc = m["roc"]
        curves[name] = RocCurve(
            np.asarray(roc["fpr"], float),
            np.asarray(roc["tpr"], float),
            np.full(len(roc["fpr"]), np.nan),
            int(m["n_in"]),
            int(m["n_out"]),
        )
    if not curves:
        return None
    d = report["dataset"]
    return plot_roc(curves, path, title=f"LiRA online · {d['name']} (pooled over models)")


def _bars(
    rows: list[str],
    series: dict[str, list[float | None]],
    ylabel: str,
    title: str,
    path: Path,
    ylim: tuple[float, float] | None = None,
) -> Path:
    from fedistill.plots import _plt

    plt = _plt()
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.arange(len(rows))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(rows) + 1.5), 3.4))
    for i, (label, vals) in enumerate(series.items()):
        ys = [np.nan if v is None else v for v in vals]
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, ys, width, label=label)
        for b, v in zip(bars, vals):
            if v is None:
                ax.text(
                    b.get_x() + b.get_width() / 2,
                    0,
                    "n/a",
                    ha="center",
                    va="bottom",
                    fontsize=6,
                    color="gray",
                    rotation=90,
                )
    ax.set_xticks(x, rows, rotation=25, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if ylim:
        ax.set_ylim(*ylim)
    ax.axhline(0, color="black", lw=0.6)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_backdoor(report: dict[str, Any], path: Path) -> Path | None:
    rows, asr, clean, base = [], [], [], []
    for name in report["cells"]:
        s = _summary(report, name, "backdoor")
        if s is None:
            continue
        rows.append(name)
        asr.append(s["asr"])
        clean.append(s["clean_accuracy"])
        base.append(s.get("baseline_asr"))
    if not rows:
        return None
    series = {"ASR": asr, "clean accuracy": clean}
    if any(b is not None for b in base):
        series["ASR of the clean pipeline"] = base
    bd = report["config"]["backdoor"]
    return _bars(
        rows,
        series,
        "fraction",
        f"Backdoor {bd['kind']} p={bd['p']} → class {bd['target']}",
        path,
        (0, 1.05),
    )


def plot_poisoning(report: dict[str, Any], path: Path) -> Path | None:
    rows, plain, defended = [], [], []
    for name in report["cells"]:
        a = _summary(report, name, "poisoning")
        b = _summary(report, name, "poisoning_defended")
        if a is None and b is None:
            continue
        rows.append(name)
        plain.append(None if a is None else 100 * a["accuracy_drop"])
        defended.append(None if b is None else 100 * b["accuracy_drop"])
    if not rows:
        return None
    po = report["config"]["poisoning"]
    series = {"no defence": plain}
    if po.get("defended"):
        series["robust filter"] = defended
    return _bars(
        rows,
        series,
        "accuracy drop (points)",
        f"Poisoning {po['attack']}: {po['m']} of {po['n']} clients",
        path,
    )
