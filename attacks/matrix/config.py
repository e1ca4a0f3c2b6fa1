"""The attack matrix's configuration: the TOML schema as dataclasses, its loader, row selection
and the quick budget."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from attacks.targets import REAL, PipelineConfig
from fedistill.config import TRAIN_FIELDS, TrainProtocol, load_dataclass
from fedistill.errors import ConfigError, UnknownNameError

SCHEMA = "fedistill.attack-matrix/1"
FEDAVG = "fedavg"
ATTACKS = ("mia", "backdoor", "poisoning", "dp_audit")
CELLS = (
    "utility",
    "mia_set",
    "mia",
    "backdoor",
    "poisoning",
    "poisoning_defended",
    "dp_audit",
)
# the cells an attack section fills, where they are more than the one of its name
ATTACK_CELLS = {"mia": ("mia_set", "mia"), "poisoning": ("poisoning", "poisoning_defended")}
# the configuration section each cell kind is measured under (utility: the budget alone)
CELL_SECTION = {
    kind: attack
    for attack in ("mia", "backdoor", "poisoning", "dp_audit")
    for kind in ATTACK_CELLS.get(attack, (attack,))
}
MIA_ATTACKS = ("loss", "lira_online", "lira_offline", "rmia")
POPULATIONS = ("exposed", "all")


# =========================================================================== configuration


@dataclass
class BudgetConfig(TrainProtocol):
    """The shared budget: default IPC and distillation iterations, and how every final model is
    trained (the training protocol's fields; a row may override them in its ``train`` table)."""

    ipc: int = 10
    distill_iterations: int | None = None  # default `iterations` of methods that have one

    def train_fields(self) -> dict[str, Any]:
        return dataclasses.asdict(self.protocol())

    def validate(self) -> None:
        if self.ipc < 1:
            raise ConfigError(f"budget: ipc must be ≥ 1, got {self.ipc}")
        if self.distill_iterations is not None and self.distill_iterations < 0:
            raise ConfigError("budget: distill-iterations must be ≥ 0")
        try:
            self.validate_protocol()
        except ConfigError as exc:
            raise ConfigError(f"budget: {exc}") from None


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
    num_targets: int = 1  # independent targets behind the populations' intervals
    set_level: bool = True  # the server's view: attacks on the set itself (mia_set cell)
    set_shadows: int = 0  # shadow pipelines calibrating the set-level distances (0: raw)
    n_boot: int = 1000  # bootstrap replicates of the 95% intervals
    rows: list[str] | None = None  # None: every pipeline row
    jobs: int = 1  # shadow pipelines trained at once, each in a single-threaded process

    def validate(self) -> None:
        if self.num_shadows < 2:
            raise ConfigError("attacks.mia: num-shadows must be ≥ 2")
        if self.jobs < 1:
            raise ConfigError("attacks.mia: jobs must be ≥ 1")
        if self.pool_size is not None and self.pool_size < 4:
            raise ConfigError("attacks.mia: pool-size must be ≥ 4")
        if self.num_targets < 1:
            raise ConfigError("attacks.mia: num-targets must be ≥ 1")
        if self.set_shadows < 0 or self.set_shadows == 1:
            raise ConfigError("attacks.mia: set-shadows must be 0 or ≥ 2")
        if self.n_boot < 100:
            raise ConfigError("attacks.mia: n-boot must be ≥ 100")


@dataclass
class BackdoorSpec:
    # "naive" on every row, or "doorping": DOORPING (with its random-trigger and NAIVE
    # controls from the same loop) on the dm / dc / dsa rows, NAIVE on the others
    kind: str = "naive"
    p: float = 0.1
    target: int = 0
    baseline: bool = True  # also the ASR of the clean pipeline with the same trigger
    models: int = 3  # final models (seeds) per figure: mean ± std
    controls: bool = True  # DOORPING: also a random-trigger and a NAIVE set from the same loop
    doorping: dict[str, Any] = field(default_factory=dict)  # DoorpingConfig overrides
    rows: list[str] | None = None

    def validate(self) -> None:
        if self.models < 1:
            raise ConfigError("attacks.backdoor: models must be ≥ 1")
        if self.kind not in ("naive", "doorping"):
            raise UnknownNameError(
                f"attacks.backdoor: unknown kind '{self.kind}'; choose naive or doorping"
            )
        if not 0.0 < self.p <= 1.0:
            raise ConfigError(f"attacks.backdoor: p must be in (0, 1], got {self.p}")
        if self.target < 0:
            raise ConfigError("attacks.backdoor: target must be a class id ≥ 0")
        from attacks.doorping import DoorpingConfig

        make_config(DoorpingConfig, self.doorping, "attacks.backdoor.doorping").validate()


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
        make_config(FilterConfig, self.filter, "attacks.poisoning.filter")


@dataclass
class DPAuditSpec:
    num_runs: int = 32
    base_size: int = 200
    canaries_per_run: int = 8
    canary: str = "mislabel"
    delta: float | None = None  # None: the accountant's δ
    confidence: float = 0.95
    white_box_trials: int = 10_000  # psg rows: gradient-canary trials in the mechanism itself
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
        if self.white_box_trials < 100:
            raise ConfigError("attacks.dp-audit: white-box-trials must be ≥ 100")


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
            and has_field(row.method, "iterations")
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


def has_field(method: str, name: str) -> bool:
    from fedistill.distill import get_method

    cfg = get_method(method).make_config()
    return dataclasses.is_dataclass(cfg) and name in {f.name for f in dataclasses.fields(cfg)}


# --------------------------------------------------------------------------- TOML → dataclasses


def _key(k: str) -> str:
    return k.replace("-", "_")


make_config = load_dataclass  # TOML tables: strict types


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
    make_config(BudgetConfig, train, f"{where}.train")  # type check
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
    budget = make_config(BudgetConfig, doc.pop("budget", {}), "budget")
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
        specs[key] = make_config(SPECS[key], table, f"attacks.{raw}")
    top = {}
    for raw, value in doc.items():
        key = _key(raw)
        if key not in TOP_KEYS - {"budget", "methods", *ATTACKS}:
            known = "dataset, data-root, seed, device, threads, reference, title, budget, methods, attacks"
            raise ConfigError(f"unknown top-level key '{raw}' (known: {known})")
        top[key] = value
    cfg = make_config(AuditConfig, {k.replace("_", "-"): v for k, v in top.items()}, "config")
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
    from fedistill.tomlfile import load_toml

    path = Path(path)
    doc = load_toml(path)
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
    """A reduced copy for a first try: 2 shadows on ≤ 400 candidates (one target, 200 bootstrap
    replicates, uncalibrated set-level distances), ≤ 1/5 of the distillation
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
        cfg.mia.num_targets = 1
        cfg.mia.set_shadows = 0
        cfg.mia.n_boot = min(cfg.mia.n_boot, 200)
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
