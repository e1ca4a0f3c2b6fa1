"""Benchmark: FedDM (clients upload DM synthetic sets) vs FedAvg on the MNIST subset.

Setting (issue 3): mnist-subset (8,006 train / 997 test), 10 clients, Dirichlet
α ∈ {0.1, 0.5, 100 (≈ IID)}; feddm = DM, IPC 10, one-shot and 3 rounds (multi-round FedDM:
clients re-distill against the current global model); fedavg = local SGD on real data, up to
30 rounds, same partitions, same ConvNet. Both run in one process through
``fedistill.federated.simulate_feddm`` / ``simulate_fedavg`` (the functions the Flower apps
call), so the curves measure the algorithms, not the transport.

FedDM's first round *is* the one-shot run (same client seeds, same server seed), so one
3-round run per α gives both: round 1 = one-shot, rounds 1-3 = multi-round.

Additionally, one real Flower simulation (``flwr run`` of this project's app on a private
``flower-superlink --simulation``, 10 simulated SuperNodes, one feddm round, clients run one
at a time) measures Flower's own overhead = run wall time − Σ clients' distillation seconds −
the server's training/evaluation seconds (target < 20 s).

Outputs: ``experiments/results/bench_federated.json``, ``federated_bytes.png`` (accuracy vs
total bytes uploaded) and ``federated_time.png`` (accuracy vs wall time), one panel per α.
Figures the issue targets, computed from the curves and stored under "targets":
feddm one-shot accuracy at α = 0.5 (≥ 0.90) and the bytes FedAvg uploads before it first
reaches that accuracy, as a multiple of feddm one-shot's bytes (≥ 10×).

Wall times are for sequential in-process clients on this machine; on a shared 2-core box
they are noisy.

Budget (CPU, measured on this project's 2-core machine, 1 thread): one DM iteration of a
client holding all 10 classes costs ≈ 2.5 s (256 real images per class), so the default
(100 iterations, 3 rounds, 10 clients, 3 α) is ≈ 9,000 client-iterations ≈ 5-6 CPU-hours at
most (non-IID clients hold fewer classes and cost less); FedAvg (3 local epochs over 8,006
images per round, 30 rounds) is ≈ 40 min per α; the server's 100 epochs on ≤ 1,000 pooled
images ≈ 6 min per round. ``--jobs 2`` runs the α values in parallel processes. The
protocol's own figures (DM 200+ iterations, 300 evaluation epochs) are reachable with
``--iterations 200 --eval-epochs 300``; cheaper: ``--batch-real 64``. Run:

    python experiments/bench_federated.py --jobs 2   # full (hours on 2 cores: the lead runs it)
    python experiments/bench_federated.py --compare-method idc   # + FedDM with IDC (issue 14)
    python experiments/bench_federated.py --quick    # smoke run: α = 0.5 only, 1,000 training
                                                     # images, width-32 models, 2 DM
                                                     # iterations; numbers meaningless
                                                     # (~2 min quiet, ~4 min on a busy box)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedistill.data import LabeledImages, load_dataset
from fedistill.errors import FedistillError
from fedistill.evaluate import EvalConfig
from fedistill.federated import simulate_fedavg, simulate_feddm
from fedistill.models import DEFAULT_GEOMETRY
from server.cli import project_config
from server.staging import run_config_arg, stage_app

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mnist-subset"
RESULTS = REPO / "experiments" / "results"
BIN = Path(sys.executable).parent

log = logging.getLogger("bench_federated")


@dataclass
class Budget:
    """Everything that sets the run's cost."""

    alphas: tuple[float, ...] = (0.1, 0.5, 100.0)
    clients: int = 10
    method: str = "dm"
    ipc: int = 10
    iterations: int = 100  # DM iterations per client per round (a CPU budget; see the docstring)
    feddm_rounds: int = 3
    fedavg_rounds: int = 30
    local_epochs: int | None = None  # FedAvg local epochs (None: simulate_fedavg's default)
    batch_real: int | None = None  # DM real images per class per iteration (None: DM's 256)
    eval_epochs: int = 100  # server training epochs on the pooled synthetic set (protocol: 300)
    train_limit: int | None = None  # use only the first N training images (quick mode)
    width: int | None = None  # ConvNet width of the global model (None: the protocol's 128)
    flower: bool = True
    flower_iterations: int | None = None  # Flower run: None = same as iterations
    flower_eval_epochs: int | None = None
    # a second FedDM run per α with this method (e.g. "idc": factorised sets), same partitions
    # and seeds, compared with FedAvg on bytes up as the first one is (issue 14)
    compare_method: str | None = None
    compare_ipcs: tuple[int, ...] | None = None  # its IPCs (None: ``ipc``): bytes vs accuracy


QUICK = Budget(
    alphas=(0.5,),
    iterations=2,
    batch_real=32,
    feddm_rounds=2,
    fedavg_rounds=2,
    eval_epochs=3,
    train_limit=1000,
    width=32,
    flower_iterations=2,
    flower_eval_epochs=2,
)


# ------------------------------------------------------------------------------ curves
def curve(result: Any) -> dict[str, Any]:
    """Per-round accuracy, cumulative bytes up/down and wall seconds of a FedResult (each
    round's ``wall_seconds``, from the run's start, is in its history)."""
    rounds = []
    down = 0
    for h in result.history:
        down += int(h["bytes_down"])
        rounds.append(
            {
                "round": int(h["round"]),
                "accuracy": float(h["accuracy"]),
                "cum_bytes_up": int(h["cum_bytes_up"]),
                "cum_bytes_down": down,
                "wall_seconds": float(h["wall_seconds"]),
                "rejected": h.get("rejected", {}),
            }
        )
    return {
        "rounds": rounds,
        "accuracy": float(result.accuracy),
        "bytes_up": int(result.bytes_up),
        "bytes_down": int(result.bytes_down),
        "client_seconds": float(result.client_seconds),
        "server_seconds": float(result.server_seconds),
        "wall_seconds": float(result.wall_seconds),
        "clients": {str(k): v for k, v in result.clients.items()},
        "partition_sizes": [len(p) for p in result.partitions],
    }


def _model_kwargs(b: Budget) -> dict[str, Any]:
    return {"width": b.width} if b.width else {}


def _method_overrides(b: Budget) -> dict[str, Any] | None:
    if b.method == "random":
        return None
    out: dict[str, Any] = {"iterations": b.iterations}
    if b.batch_real:
        out["batch_real"] = b.batch_real
    return out


def run_feddm(train: LabeledImages, test: LabeledImages, alpha: float, b: Budget, seed: int):
    res = simulate_feddm(
        train,
        test,
        num_clients=b.clients,
        partitioner="dirichlet",
        alpha=alpha,
        method=b.method,
        ipc=b.ipc,
        method_config=_method_overrides(b),
        eval_cfg=EvalConfig(epochs=b.eval_epochs, num_models=1, model_kwargs=_model_kwargs(b)),
        rounds=b.feddm_rounds,
        seed=seed,
    )
    return curve(res)


def run_fedavg(train: LabeledImages, test: LabeledImages, alpha: float, b: Budget, seed: int):
    res = simulate_fedavg(
        train,
        test,
        num_clients=b.clients,
        partitioner="dirichlet",
        alpha=alpha,
        rounds=b.fedavg_rounds,
        **({"local_epochs": b.local_epochs} if b.local_epochs else {}),
        model_kwargs=_model_kwargs(b),
        seed=seed,
    )
    return curve(res)


def bytes_to_reach(fedavg: dict[str, Any], target: float) -> dict[str, Any]:
    """The cumulative bytes FedAvg has uploaded when its accuracy first reaches ``target``."""
    for r in fedavg["rounds"]:
        if r["accuracy"] >= target:
            return {"reached": True, "round": r["round"], "bytes_up": r["cum_bytes_up"]}
    last = fedavg["rounds"][-1]
    return {"reached": False, "round": None, "bytes_up_lower_bound": last["cum_bytes_up"]}


def versus_fedavg(fedavg: dict[str, Any], oneshot: dict[str, Any]) -> dict[str, Any]:
    """What FedAvg uploads to match a one-shot round's accuracy, and that over the one-shot's
    bytes (a lower bound when FedAvg never got there within its rounds)."""
    reach = bytes_to_reach(fedavg, oneshot["accuracy"])
    fed_bytes = reach.get("bytes_up", reach.get("bytes_up_lower_bound"))
    return {
        "fedavg_to_match_oneshot": reach,
        "fedavg_bytes_ratio": fed_bytes / max(oneshot["cum_bytes_up"], 1),
        "fedavg_bytes_ratio_is_lower_bound": not reach["reached"],
    }


def summarise(alpha_runs: dict[str, Any]) -> dict[str, Any]:
    """Per α: feddm one-shot accuracy/bytes and what FedAvg needs to match it; the same for
    each compared method's one-shot against the same FedAvg run."""
    out = {}
    for key, run in alpha_runs.items():
        one = run["feddm"]["rounds"][0]
        out[key] = {
            "feddm_oneshot_accuracy": one["accuracy"],
            "feddm_oneshot_bytes_up": one["cum_bytes_up"],
            "feddm_final_accuracy": run["feddm"]["accuracy"],
            "fedavg_final_accuracy": run["fedavg"]["accuracy"],
        } | versus_fedavg(run["fedavg"], one)
        compare = [
            {
                "ipc": cmp["ipc"],
                "oneshot_accuracy": cmp["rounds"][0]["accuracy"],
                "oneshot_bytes_up": cmp["rounds"][0]["cum_bytes_up"],
                "final_accuracy": cmp["accuracy"],
            }
            | versus_fedavg(run["fedavg"], cmp["rounds"][0])
            for cmp in run.get("feddm_compare", [])
        ]
        if compare:
            out[key]["compare"] = compare
    return out


# ------------------------------------------------------------------------------ Flower run
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _find_results(root: Path) -> Path | None:
    found = sorted(root.rglob("results.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _client_and_server_seconds(res: dict[str, Any]) -> tuple[float, float]:
    """Σ clients' distillation seconds and the server's training + evaluation seconds
    from the app's results.json."""
    clients = res.get("clients", {})
    rows = clients.values() if isinstance(clients, dict) else clients
    client_s = sum(float(c.get("seconds", 0.0)) for c in rows if isinstance(c, dict))
    server_s = 0.0
    for key in ("server_seconds", "server_train_seconds", "train_seconds"):
        if isinstance(res.get(key), int | float):
            server_s = float(res[key])
            break
    else:
        for rnd in res.get("rounds", res.get("history", [])):
            for key in ("server_seconds", "train_seconds", "seconds_train", "eval_seconds"):
                if isinstance(rnd.get(key), int | float):
                    server_s += float(rnd[key])
    return client_s, server_s


def flower_overhead(data_root: Path, b: Budget, seed: int, alpha: float = 0.5) -> dict[str, Any]:
    """One real Flower simulation of the app: 10 SuperNodes, one feddm round, on a private
    ``flower-superlink --simulation`` (its own port and FLWR_HOME; stopped afterwards)."""
    work = Path(tempfile.mkdtemp(prefix="fedistill-bench-flower-"))
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        FLWR_HOME=str(work / "flwr-home"),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_TELEMETRY_ENABLED="0",
        OMP_NUM_THREADS="1",
    )
    port = _free_port()
    (work / "superlink").mkdir()
    (work / "flwr-home").mkdir()
    (work / "flwr-home" / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    app = stage_app(REPO, work / "app")
    run_config = {
        "dataset": "mnist",
        "data-root": str(data_root.resolve()),
        "partitioner": "dirichlet",
        "alpha": alpha,
        "method": b.method,
        "ipc": b.ipc,
        "iterations": b.flower_iterations or b.iterations,
        "rounds": 1,
        "strategy": "feddm",
        "seed": seed,
        "eval.epochs": b.flower_eval_epochs or b.eval_epochs,
        "eval.num-models": 1,
        "baseline": "",  # no FedAvg after the FedDM round: one round is what is measured
        "min-nodes": b.clients,
        "client-threads": 1,
    }
    if b.batch_real:
        run_config["method-options"] = f"batch_real={b.batch_real}"
    known_keys = set(project_config(REPO))  # nested tables as dotted keys (eval.epochs)
    if "results-dir" in known_keys:
        run_config["results-dir"] = str(work / "results")
    dropped = sorted(set(run_config) - known_keys)
    if dropped:  # keys this version of the app does not take: say so, the budget differs
        log.warning("the app takes no %s: the Flower run leaves them at its defaults", dropped)
    for key in dropped:
        run_config.pop(key)
    fed_config = f"num-supernodes={b.clients} client-resources-num-cpus=1 init-args-num-cpus=1"
    argv = [str(BIN / "flwr"), "run", str(app), "bench", "--stream"]
    argv += ["--federation-config", fed_config]
    argv += ["--run-config", run_config_arg(run_config)]

    link = subprocess.Popen(
        [
            str(BIN / "flower-superlink"),
            "--insecure",
            "--simulation",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--disable-runtime-dependency-installation",
        ],
        cwd=work / "superlink",
        env=env,
        stdout=(work / "superlink.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    out: dict[str, Any] = {"run_config": run_config, "federation_config": fed_config}
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if link.poll() is not None or time.monotonic() > deadline:
                raise FedistillError(f"flower-superlink did not start; see {work}/superlink.log")
            time.sleep(0.2)
        print("$ " + " ".join(argv), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(
            argv, cwd=work, env=env, capture_output=True, text=True, timeout=3600, check=False
        )
        wall = time.perf_counter() - t0
        (work / "flwr-run.log").write_text(proc.stdout + proc.stderr)
        m = re.search(r"started run (\d+)", proc.stdout)
        info: dict[str, Any] = {}
        if m:
            ls = subprocess.run(
                [str(BIN / "flwr"), "ls", "bench", "--run-id", m.group(1), "--format", "json"],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            with contextlib.suppress(ValueError, KeyError, IndexError):
                info = json.loads(ls.stdout[ls.stdout.index("{") :])["runs"][0]
        results_path = _find_results(work)
        out.update(
            status=info.get("status"),
            returncode=proc.returncode,
            wall_seconds_cli=wall,
            run_elapsed_seconds=info.get("elapsed"),
            log=str(work / "flwr-run.log"),
            results_file=str(results_path) if results_path else None,
        )
        if results_path is None:
            out["error"] = f"no results.json under {work}; see {work}/flwr-run.log"
            return out
        res = json.loads(results_path.read_text())
        client_s, server_s = _client_and_server_seconds(res)
        wall_run = float(info.get("elapsed") or wall)
        out.update(
            results=res,
            clients_seconds_sum=client_s,
            server_seconds=server_s,
            overhead_seconds=wall_run - client_s - server_s,
            overhead_seconds_cli=wall - client_s - server_s,
            # the app's own figure: its wall time minus, per round, the slowest client and
            # the server's seconds (what a parallel federation would wait for)
            app_overhead_seconds=res.get("overhead_seconds"),
            target_overhead_below_20s=(wall_run - client_s - server_s) < 20.0,
        )
        return out
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(link.pid, signal.SIGTERM)
        try:
            link.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(link.pid, signal.SIGKILL)
            link.wait(timeout=5)


def run_alpha(
    train: LabeledImages, test: LabeledImages, alpha: float, b: Budget, seed: int
) -> dict[str, Any]:
    """FedDM (its round 1 is the one-shot run) and FedAvg at one α."""
    key = f"{alpha:g}"
    feddm = run_feddm(train, test, alpha, b, seed)
    print(
        f"α={key}: feddm "
        + ", ".join(f"r{r['round']} {r['accuracy']:.3f}" for r in feddm["rounds"])
        + f" ({feddm['bytes_up'] / 1e6:.2f} MB up, {feddm['wall_seconds']:.0f} s)",
        flush=True,
    )
    fedavg = run_fedavg(train, test, alpha, b, seed)
    print(
        f"α={key}: fedavg final {fedavg['accuracy']:.3f} after {len(fedavg['rounds'])} rounds "
        f"({fedavg['bytes_up'] / 1e6:.1f} MB up, {fedavg['wall_seconds']:.0f} s)",
        flush=True,
    )
    out = {"alpha": alpha, "feddm": feddm, "fedavg": fedavg}
    if b.compare_method:
        out["feddm_compare"] = []
        for ipc in b.compare_ipcs or (b.ipc,):
            other = run_feddm(
                train, test, alpha, dataclasses.replace(b, method=b.compare_method, ipc=ipc), seed
            )
            print(
                f"α={key}: feddm with {b.compare_method} IPC {ipc} "
                + ", ".join(f"r{r['round']} {r['accuracy']:.3f}" for r in other["rounds"])
                + f" ({other['bytes_up'] / 1e6:.2f} MB up)",
                flush=True,
            )
            out["feddm_compare"].append(dict(other, ipc=ipc, method=b.compare_method))
    return out


def _alpha_job(shared: tuple, alpha: float) -> dict[str, Any]:
    """One α in a worker process of :func:`fedistill.jobs.map_jobs` (one thread)."""
    root, b, seed = shared
    train = load_dataset("mnist", root, train=True)
    test = load_dataset("mnist", root, train=False)
    if b.train_limit:
        train = train.subset(torch.arange(min(b.train_limit, len(train))))
    return run_alpha(train, test, alpha, b, seed)


def run_alphas_in_processes(b: Budget, args: argparse.Namespace) -> dict[str, Any]:
    """One single-threaded worker process per α, ``args.jobs`` at a time (no Flower run).
    Wall times then share the CPU with the other jobs."""
    from fedistill.jobs import map_jobs

    shared = (str(args.data_root), b, args.seed)
    runs = map_jobs(_alpha_job, list(b.alphas), shared, jobs=args.jobs)
    return {f"{a:g}": run for a, run in zip(b.alphas, runs, strict=True)}


# ------------------------------------------------------------------------------ plots
def plot(alpha_runs: dict[str, Any], out_dir: Path) -> list[Path]:
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    from fedistill.plots import pyplot

    plt = pyplot()

    paths = []
    for xkey, xlabel, name, logx in (
        ("cum_bytes_up", "total MB uploaded by clients (log)", "federated_bytes.png", True),
        (
            "wall_seconds",
            "wall time (s, sequential clients, this machine)",
            "federated_time.png",
            False,
        ),
    ):
        scale = 1e6 if logx else 1.0
        n = len(alpha_runs)
        fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 3.8), squeeze=False)
        for ax, (key, run) in zip(axes[0], alpha_runs.items()):
            for strat, style in (("fedavg", "o-"), ("feddm", "s-")):
                rounds = run[strat]["rounds"]
                xs = [r[xkey] / scale for r in rounds]
                ys = [r["accuracy"] for r in rounds]
                label = "FedAvg" if strat == "fedavg" else f"FedDM ({len(rounds)} rounds)"
                ax.plot(xs, ys, style, ms=3.5, label=label)
            one = run["feddm"]["rounds"][0]
            ax.plot(
                [one[xkey] / scale],
                [one["accuracy"]],
                "*",
                ms=14,
                color="crimson",
                label="FedDM one-shot",
            )
            ax.axhline(one["accuracy"], color="crimson", lw=0.6, ls=":")
            for cmp, marker in zip(run.get("feddm_compare", []), "PXDv^<>", strict=False):
                first = cmp["rounds"][0]
                ax.plot(
                    [first[xkey] / scale],
                    [first["accuracy"]],
                    marker,
                    ms=9,
                    label=f"FedDM {cmp.get('method', '')} IPC {cmp['ipc']} one-shot",
                )
            if logx:
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(ScalarFormatter())
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_title(f"Dirichlet α = {key}")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test accuracy")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=130)
        plt.close(fig)
        paths.append(path)
    return paths


def flower_only(args: argparse.Namespace) -> int:
    """Re-run only the Flower overhead measurement into an existing bench_federated.json."""
    out = args.out_dir / "bench_federated.json"
    if not out.is_file():
        print(f"error: {out} not found: run the benchmark first", file=sys.stderr)
        return 2
    doc = json.loads(out.read_text())
    b = Budget(**{k: tuple(v) if k == "alphas" else v for k, v in doc["budget"].items()})
    load = os.getloadavg()[0]
    try:
        flower = flower_overhead(args.data_root, b, args.seed)
    except (FedistillError, OSError, subprocess.SubprocessError) as err:
        flower = {"error": str(err)}
    flower["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    flower["load_average_before"] = load
    doc["flower"] = flower
    doc["targets"]["flower_overhead_seconds"] = flower.get("overhead_seconds")
    out.write_text(json.dumps(doc, indent=2, default=str))
    print(f"flower: {flower.get('overhead_seconds', flower.get('error'))}; rewrote {out}")
    return 0 if "overhead_seconds" in flower else 1


# ------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--quick", action="store_true", help="tiny budgets: a ~1-2 min smoke run")
    p.add_argument("--alphas", type=float, nargs="+")
    p.add_argument("--clients", type=int)
    p.add_argument("--method", help="distillation method of the feddm clients (default dm)")
    p.add_argument("--iterations", type=int, help="DM iterations per client per round")
    p.add_argument(
        "--compare-method",
        help="also run FedDM with this method (e.g. idc) on the same partitions and seeds",
    )
    p.add_argument(
        "--compare-ipcs",
        type=int,
        nargs="+",
        help="the compared method's IPCs (stored images per class; default: the FedDM runs' IPC)",
    )
    p.add_argument("--eval-epochs", type=int, help="server epochs on the pooled sets")
    p.add_argument("--feddm-rounds", type=int)
    p.add_argument("--fedavg-rounds", type=int)
    p.add_argument("--train-limit", type=int, help="use only the first N training images")
    p.add_argument("--batch-real", type=int, help="DM real images per class per iteration")
    p.add_argument("--width", type=int, help="ConvNet width of the global model (default 128)")
    p.add_argument("--local-epochs", type=int, help="FedAvg local epochs per round")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="run the α values in this many processes (1 thread each)",
    )
    p.add_argument("--no-flower", action="store_true", help="skip the real Flower run")
    p.add_argument(
        "--flower-only",
        action="store_true",
        help="only the real Flower run, with the budget of the existing bench_federated.json in "
        "--out-dir, whose flower entry it replaces (e.g. to re-measure on a quiet machine)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch threads (default: 1 with --quick, else 2)")
    return p.parse_args(argv)


def budget_from(args: argparse.Namespace) -> Budget:
    b = QUICK if args.quick else Budget()
    b = Budget(**vars(b))
    for field_name, value in (
        ("alphas", tuple(args.alphas) if args.alphas else None),
        ("clients", args.clients),
        ("method", args.method),
        ("iterations", args.iterations),
        ("eval_epochs", args.eval_epochs),
        ("feddm_rounds", args.feddm_rounds),
        ("fedavg_rounds", args.fedavg_rounds),
        ("train_limit", args.train_limit),
        ("batch_real", args.batch_real),
        ("width", args.width),
        ("local_epochs", args.local_epochs),
        ("compare_method", args.compare_method),
        ("compare_ipcs", tuple(args.compare_ipcs) if args.compare_ipcs else None),
    ):
        if value is not None:
            setattr(b, field_name, value)
    if args.no_flower:
        b.flower = False
    return b


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads or (1 if args.quick else 2))
    root = args.data_root
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        print(
            f"error: MNIST subset not found at {root} (expected MNIST/raw/*-ubyte files); "
            "pass --data-root",
            file=sys.stderr,
        )
        return 2
    if args.flower_only:
        return flower_only(args)
    b = budget_from(args)
    print("$ " + " ".join([Path(sys.executable).name, *sys.argv]), flush=True)
    try:
        train = load_dataset("mnist", root, train=True)
        test = load_dataset("mnist", root, train=False)
    except FedistillError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if b.train_limit:
        train = train.subset(torch.arange(min(b.train_limit, len(train))))
    print(f"budget: {b}", flush=True)

    t0 = time.perf_counter()
    if args.jobs > 1 and len(b.alphas) > 1:
        alpha_runs = run_alphas_in_processes(b, args)
    else:
        alpha_runs = {}
        for alpha in b.alphas:
            alpha_runs[f"{alpha:g}"] = run_alpha(train, test, alpha, b, args.seed)

    summary = summarise(alpha_runs)
    flower = None
    if b.flower:
        try:
            flower = flower_overhead(root, b, args.seed)
        except (FedistillError, OSError, subprocess.SubprocessError) as err:
            flower = {"error": str(err)}
        if "overhead_seconds" in flower:
            print(
                f"flower: run {flower['run_elapsed_seconds']:.1f} s, clients Σ "
                f"{flower['clients_seconds_sum']:.1f} s, server {flower['server_seconds']:.1f} s "
                f"→ overhead {flower['overhead_seconds']:.1f} s",
                flush=True,
            )
        else:
            print(f"flower: {flower.get('error', flower.get('status'))}", flush=True)

    mid = summary.get("0.5")
    targets = {
        "feddm_oneshot_accuracy_alpha_0.5": mid["feddm_oneshot_accuracy"] if mid else None,
        "feddm_oneshot_accuracy_target": 0.90,
        "fedavg_bytes_ratio_alpha_0.5": mid["fedavg_bytes_ratio"] if mid else None,
        "fedavg_bytes_ratio_is_lower_bound": mid["fedavg_bytes_ratio_is_lower_bound"]
        if mid
        else None,
        "fedavg_bytes_ratio_target": 10.0,
        "flower_overhead_seconds": flower.get("overhead_seconds") if flower else None,
        "flower_overhead_target_seconds": 20.0,
    }
    if mid and "compare" in mid:  # issue 14: FedAvg needs ≥ 33× the factorised one-shot's bytes
        targets["compare_method"] = b.compare_method
        targets["compare_alpha_0.5"] = [
            {k: c[k] for k in ("ipc", "oneshot_accuracy", "oneshot_bytes_up", "fedavg_bytes_ratio")}
            | {"is_lower_bound": c["fedavg_bytes_ratio_is_lower_bound"]}
            for c in mid["compare"]
        ]
        targets["compare_fedavg_bytes_ratio_target"] = 33.0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quick": bool(args.quick),
        "budget": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(b).items()},
        "data": {"root": str(root), "train": len(train), "test": len(test)},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "convnet_geometry": DEFAULT_GEOMETRY,
            "note": "wall times measured on a shared machine; noisy",
        },
        "seconds_total": time.perf_counter() - t0,
        "targets": targets,
        "summary": summary,
        "alphas": alpha_runs,
        "flower": flower,
    }
    out = args.out_dir / "bench_federated.json"
    out.write_text(json.dumps(doc, indent=2, default=str))
    plots = plot(alpha_runs, args.out_dir)
    print(json.dumps(targets, indent=2))
    print(f"wrote {out}, " + ", ".join(str(p) for p in plots))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
