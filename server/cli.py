"""``fedistill run``: the Flower app in one command, with Flower's details handled.

    fedistill run                                   # digits, 5 clients, FedDM (DM, IPC 10) + FedAvg
    fedistill run --strategy fedavg --rounds 20
    fedistill run --num-clients 10 --run-config "dataset='mnist' data-root='../shared/data/mnist-subset'"

It runs the app (the ServerApp and ClientApp that ``[tool.flwr.app.components]`` names,
configured by ``[tool.flwr.app.config]`` in pyproject.toml plus the overrides) on Flower's Simulation Runtime
(the same runtime ``flwr run`` starts inside a local SuperLink), in this process: per-run
dependency installation off, ``FLWR_HOME`` under the project (``.flwr-home``) and one CPU per
simulated client. Progress is streamed; the summary table is printed from the results file at the end.

Plain Flower works too (flwr 1.42)::

    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 flwr run . --stream \
        --federation-config "num-supernodes=5 client-resources-num-cpus=1"

``flwr run`` then starts a managed local SuperLink (simulation mode, 127.0.0.1:39091/39093)
that stays in the background after the run; ``results-dir`` is relative to that SuperLink's
working directory, so give an absolute path. This command avoids the background process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from fedistill.cli import positive_int
from fedistill.errors import FedistillError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TABLE_ENV = "FEDISTILL_LOG_TABLE"


class RunError(FedistillError):
    pass


def _flwr_app(root: Path) -> dict[str, Any]:
    """The ``[tool.flwr.app]`` table of the project's pyproject.toml."""
    from fedistill.tomlfile import load_toml

    try:
        return load_toml(root / "pyproject.toml")["tool"]["flwr"]["app"]
    except KeyError:
        raise RunError(f"{root / 'pyproject.toml'} has no [tool.flwr.app] table") from None


def project_config(root: Path) -> dict[str, Any]:
    """The app's run config as Flower reads it: nested tables flattened to dotted keys."""
    from flwr.common.config import flatten_dict

    return flatten_dict(_flwr_app(root).get("config", {}))


def app_components(root: Path) -> tuple[str, str]:
    """``(serverapp, clientapp)`` as the project's ``[tool.flwr.app.components]`` names them,
    so a user who swaps in their own ClientApp or ServerApp runs theirs."""
    comp = _flwr_app(root).get("components", {})
    try:
        return str(comp["serverapp"]), str(comp["clientapp"])
    except KeyError as exc:
        raise RunError(f"[tool.flwr.app.components] in {root} lacks {exc}") from None


def parse_run_config(text: str, known: dict[str, Any]) -> dict[str, Any]:
    """``"key=value key2='text'"`` (Flower's --run-config syntax) to a dict; unknown keys
    are a RunError naming the known ones."""
    from flwr.common.config import parse_config_args

    try:
        out = parse_config_args([text]) if text.strip() else {}
    except Exception as exc:  # click.ClickException for bad TOML
        raise RunError(f"--run-config: {getattr(exc, 'message', exc)}") from None
    bad = sorted(set(out) - set(known))
    if bad:
        raise RunError(f"--run-config: unknown key(s) {', '.join(bad)}; known: {', '.join(known)}")
    return out


def simulate(
    overrides: dict[str, Any],
    num_supernodes: int,
    *,
    project_root: str | Path = PROJECT_ROOT,
    cpus_per_client: float = 1.0,
    total_cpus: int | None = None,
    flwr_home: str | Path | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Run the app on Flower's Simulation Runtime (Ray backend) in this process and return
    the fused run config it ran with. Raises RunError when the ServerApp failed.

    The apps are the ones ``[tool.flwr.app.components]`` names. This is the one function that
    uses Flower's private names (``_run_simulation`` and the run bookkeeping around it), and
    why: flwr 1.42's public ``flwr.simulation.run_simulation`` is deprecated and starts the
    apps with an *empty* run config (neither pyproject's ``[tool.flwr.app.config]`` nor
    overrides), and the public ``flwr run`` leaves a managed SuperLink running in the
    background after the run. flwr is pinned (==1.42.0), so these names cannot move under us;
    ``tests/server/test_simulation.py`` runs this path."""
    root = Path(project_root).resolve()
    os.environ["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ["FLWR_HOME"] = str(Path(flwr_home or root / ".flwr-home").resolve())
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    Path(os.environ["FLWR_HOME"]).mkdir(parents=True, exist_ok=True)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))

    from flwr.app import Context, RecordDict
    from flwr.common.config import get_fused_config_from_dir
    from flwr.common.constant import RUN_ID_NUM_BYTES, SUPERLINK_NODE_ID, TASK_ID_NUM_BYTES
    from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supercore.telemetry import EventType

    fused = get_fused_config_from_dir(root, overrides)  # unknown keys raise ValueError
    # what flwr's run_simulation() does for a run, plus our overrides (which it cannot take)
    run = Run.create_empty(run_id=generate_rand_int_from_bytes(RUN_ID_NUM_BYTES))
    run.override_config = dict(overrides)
    run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    run.federation_id = NOOP_FEDERATION_ID
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    context = Context(
        run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config=fused
    )
    cpus = total_cpus or os.cpu_count() or 1
    backend_config = {
        "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "logging_level": "error", "log_to_driver": verbose},
    }
    server_attr, client_attr = app_components(root)
    try:
        _run_simulation(
            num_supernodes=num_supernodes,
            exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
            server_app_attr=server_attr,
            client_app_attr=client_attr,
            backend_name="ray",
            backend_config=backend_config,
            app_dir=str(root),
            run=run,
            server_app_context=context,
            is_app=True,
            verbose_logging=verbose,
        )
    except Exception as exc:
        raise RunError(f"the Flower run failed: {exc}") from exc
    return fused


def preflight(root: Path, overrides: dict[str, Any]) -> None:
    """Fail in one line, before Flower and Ray start, on a config the app would refuse:
    settings, the method and its options, the dataset's presence."""
    from flwr.common.config import get_fused_config_from_dir

    from fedistill.wire import RunSettings, load_split

    try:
        fused = get_fused_config_from_dir(root, overrides)
    except ValueError as exc:
        raise RunError(f"--run-config: {exc}") from None
    settings = RunSettings.from_run_config(fused)
    if settings.strategy != "fedavg":
        settings.method_overrides()
    settings.eval_config()
    load_split(settings.dataset, settings.data_root, False)


def results_path(config: dict[str, Any], started: float) -> Path | None:
    """The results.json of this run: the named run's, or the newest written since start."""
    root = Path(str(config.get("results-dir", "results"))).expanduser()
    name = str(config.get("run-name", ""))
    if name:
        p = root / name / "results.json"
        return p if p.is_file() else None
    found = [p for p in root.glob("*/results.json") if p.stat().st_mtime >= started - 1]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def cmd_run(args: argparse.Namespace) -> int:
    from server.results import format_table

    root = Path(args.project).resolve()
    if not (root / "pyproject.toml").is_file():
        raise RunError(f"no pyproject.toml in {root}")
    known = project_config(root)
    overrides = parse_run_config(args.run_config or "", known)
    strategy = args.strategy or overrides.get("strategy", known.get("strategy"))
    for key, value in (
        ("strategy", args.strategy),
        ("fedavg-rounds" if strategy == "fedavg" else "rounds", args.rounds),
        ("results-dir", args.results_dir),
        ("run-name", args.run_name),
        ("baseline", "" if args.no_baseline else None),
    ):
        if value is not None:
            overrides[key] = value
    results_dir = Path(str(overrides.get("results-dir", known.get("results-dir", "results"))))
    if not results_dir.is_absolute():  # relative to where the user stands, not to Flower's cwd
        overrides["results-dir"] = str((Path.cwd() / results_dir).resolve())
    data_root = str(overrides.get("data-root", known.get("data-root", "")))
    if data_root and not Path(data_root).is_absolute():
        overrides["data-root"] = str((Path.cwd() / data_root).resolve())

    preflight(root, overrides)

    import logging

    logging.getLogger().setLevel(logging.WARNING)  # third parties (alembic, ray) stay quiet
    logging.getLogger("fedistill").setLevel(logging.WARNING if args.quiet else logging.INFO)
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.propagate = False  # Flower has its own console handler
    flwr_logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
    os.environ[TABLE_ENV] = "0"  # the table is printed here, once, from the results file
    started = time.time()
    t0 = time.perf_counter()
    fused = simulate(
        overrides,
        args.num_clients,
        project_root=root,
        cpus_per_client=args.cpus_per_client,
        flwr_home=args.flwr_home,
        verbose=args.verbose,
    )
    wall = time.perf_counter() - t0
    path = results_path(fused, started)
    if path is None:
        raise RunError("the run wrote no results.json")
    data = json.loads(path.read_text())
    print()
    print(format_table(data))
    print(f"wall time {wall:.1f} s · results {path}")
    if data.get("status") != "completed":
        raise RunError(f"run {data.get('status')}: {data.get('error')}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fedistill run`` to the fedistill CLI (entry point ``fedistill.commands``)."""
    p = subparsers.add_parser(
        "run",
        help="run the federated app (Flower simulation): FedDM and the FedAvg baseline",
        description=__doc__.split("\n\n")[2],
    )
    p.add_argument("--strategy", choices=["feddm", "feddm-robust", "fedavg"])
    p.add_argument(
        "--rounds", type=positive_int, help="rounds of the strategy (FedDM: 1 = one-shot)"
    )
    p.add_argument("--num-clients", type=positive_int, default=5, help="simulated SuperNodes (5)")
    p.add_argument(
        "--run-config",
        "-c",
        default="",
        metavar="'k=v ...'",
        help="run-config overrides, as in flwr run (e.g. \"method='dc' ipc=1\")",
    )
    p.add_argument("--results-dir", help="where results/<run>/ goes (default: ./results)")
    p.add_argument("--run-name", help="folder name of this run (default: time-strategy-…)")
    p.add_argument("--no-baseline", action="store_true", help="skip the FedAvg baseline")
    p.add_argument("--cpus-per-client", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--flwr-home", default=None, help="Flower's state folder (./.flwr-home)")
    p.add_argument("--project", default=str(PROJECT_ROOT), help=argparse.SUPPRESS)
    p.add_argument("--verbose", action="store_true", help="Flower's debug logs")
    p.add_argument("--quiet", "-q", action="store_true", help="warnings and the table only")
    p.set_defaults(func=cmd_run)
