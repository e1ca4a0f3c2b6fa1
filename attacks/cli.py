"""``fedistill audit``: the attack matrix from a TOML configuration.

    fedistill audit --config experiments/audit.toml --out results/audit
    fedistill audit --config experiments/audit_quick.toml --methods real,dm --attacks mia
    fedistill audit --config experiments/audit.toml --quick       # reduced budgets, a first try
    python -m attacks --config experiments/audit_quick.toml       # the same, without the entry point

Writes ``report.json`` (after every cell), ``report.md`` and ``plots/`` under ``--out``. Bad
input (a missing or invalid config file, an unknown key, method, attack or dataset) is one line
on stderr and exit code 2; an attack that fails inside the matrix is recorded in the report and
the run goes on (``--strict``: exit 1 when any cell failed).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from fedistill.cli import guarded
from fedistill.errors import FedistillError


class AuditUsageError(FedistillError):
    pass


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, type=Path, help="the matrix (TOML)")
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default: audit-<config name>)"
    )
    p.add_argument("--quick", action="store_true", help="reduced budgets (a first try)")
    p.add_argument("--dataset", default=None, help="override the config's dataset")
    p.add_argument("--data-root", default=None, help="override the config's data-root")
    p.add_argument(
        "--methods", type=_names, default=None, metavar="A,B", help="only these rows (names)"
    )
    p.add_argument(
        "--attacks",
        type=_names,
        default=None,
        metavar="A,B",
        help="only these attacks (mia, backdoor, poisoning, dp-audit)",
    )
    p.add_argument("--seed", type=int, default=None, help="override the config's seed")
    p.add_argument("--device", default=None, help="override the config's device (cpu, cuda, …)")
    p.add_argument(
        "--threads", type=int, default=None, help="override the config's torch threads (0: default)"
    )
    p.add_argument(
        "--keep-from",
        type=Path,
        default=None,
        metavar="REPORT",
        help="an earlier report.json: keep its ok cells measured under the same settings",
    )
    p.add_argument(
        "--rerun",
        default="",
        metavar="KIND,...",
        help="with --keep-from: cell kinds to measure again (utility, mia_set, mia, backdoor, "
        "poisoning, poisoning_defended, dp_audit)",
    )
    p.add_argument("--strict", action="store_true", help="exit 1 when any cell failed")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar, warnings only")


def register(subparsers) -> None:
    """Add ``audit`` to the ``fedistill`` command (entry point ``fedistill.commands``)."""
    p = subparsers.add_parser("audit", help="run the attack matrix: methods × attacks → report")
    add_arguments(p)
    p.set_defaults(func=cmd_audit)


def _quiet_libraries(quiet: bool) -> None:
    """The matrix logs one line per cell; the libraries' per-step INFO lines stay hidden."""
    for name in ("fedistill", "attacks"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("attacks.matrix").setLevel(logging.WARNING if quiet else logging.INFO)


def cmd_audit(args: argparse.Namespace, prog: str = "fedistill audit") -> int:
    from attacks.matrix import load_config, quick, run_matrix, select

    cfg = load_config(args.config)
    if args.dataset is not None:
        cfg.dataset = args.dataset
    if args.data_root is not None:
        cfg.data_root = args.data_root or None
    if args.seed is not None:
        cfg.seed = args.seed
    if args.device is not None:
        cfg.device = args.device
    if args.threads is not None:
        cfg.threads = args.threads
    cfg = select(cfg, rows=args.methods, attacks=args.attacks)
    if args.quick:
        cfg = quick(cfg)
    cfg.validate()
    out = args.out or Path(f"audit-{Path(args.config).stem}")
    _quiet_libraries(args.quiet)
    keep, rerun = load_keep(args.keep_from, args.rerun)
    report = run_matrix(
        cfg,
        out,
        command=_command(args, prog, out),
        progress=not args.quiet,
        keep=keep,
        rerun=rerun,
    )
    cells = [c for row in report["cells"].values() for c in row.values()]
    failed = [c for c in cells if c["status"] == "failed"]
    skipped = [c for c in cells if c["status"] == "skipped"]
    print(
        f"wrote {out / 'report.md'}, {out / 'report.json'} and {len(report['plots'])} plot(s): "
        f"{len(cells) - len(failed) - len(skipped)} cells ok, {len(failed)} failed, "
        f"{len(skipped)} skipped (not applicable or not selected; see report.md) ({report['seconds'] / 60:.1f} min)"
    )
    return 1 if (args.strict and failed) else 0


def load_keep(path: Path | None, rerun: str) -> tuple[dict | None, set[str]]:
    """The earlier report to keep cells from (parsed as JSON, never unpickled) and the cell
    kinds to measure again; a missing or malformed file is one ConfigError."""
    import json

    from attacks.matrix.config import CELLS
    from fedistill.errors import ConfigError

    kinds = {k.strip().replace("-", "_") for k in rerun.split(",") if k.strip()}
    bad = sorted(kinds - set(CELLS))
    if bad:
        raise ConfigError(
            f"--rerun: unknown cell kind(s) {', '.join(bad)}; known: {', '.join(CELLS)}"
        )
    if path is None:
        if kinds:
            raise ConfigError("--rerun needs --keep-from")
        return None, set()
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--keep-from {path}: not a readable report ({exc})") from None
    if not isinstance(report, dict) or not isinstance(report.get("cells"), dict):
        raise ConfigError(f"--keep-from {path}: not an attack-matrix report")
    return report, kinds


def _command(args: argparse.Namespace, prog: str, out: Path) -> str:
    """The command line that reproduces this run (for report.md), rebuilt from the arguments."""
    parts = [*prog.split(), "--config", str(args.config), "--out", str(out)]
    for flag, value in (
        ("--dataset", args.dataset),
        ("--data-root", args.data_root),
        ("--seed", args.seed),
        ("--device", args.device),
        ("--threads", args.threads),
        ("--keep-from", args.keep_from),
    ):
        if value is not None:
            parts += [flag, str(value)]
    if args.rerun:
        parts += ["--rerun", args.rerun]
    for flag, names in (("--methods", args.methods), ("--attacks", args.attacks)):
        if names:
            parts += [flag, ",".join(names)]
    parts += [f for f, on in (("--quick", args.quick), ("--quiet", args.quiet)) if on]
    return shlex.join(parts)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise AuditUsageError(f"{self.prog}: {message}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m attacks [audit] --config FILE …``: the same as ``fedistill audit``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["audit"]:
        argv = argv[1:]

    def command() -> int:
        parser = _Parser(prog="python -m attacks", description="The attack matrix.")
        add_arguments(parser)
        args = parser.parse_args(argv)
        logging.basicConfig(
            level=logging.WARNING if args.quiet else logging.INFO,
            format="%(levelname)s %(name)s: %(message)s",
        )
        return cmd_audit(args, prog="python -m attacks")

    return guarded(command)
