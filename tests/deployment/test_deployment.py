"""The Flower app on a real Deployment Engine: flower-superlink + 3 flower-supernode processes
on 127.0.0.1, each node with its own ``--node-config`` partition, the run submitted with
``flwr run``. Every process is started and stopped by the test (harness.py), by PID, in
bounded time; the fixture fails a test that leaves one running.

Budgets are tiny (digits, a few DM iterations, a few server epochs) so each test takes
1-2 minutes on 2 cores; the node-loss test waits for the SuperLink to declare the killed node
offline (2 missed heartbeats ≈ 60 s) unless the ServerApp's own reply timeout comes first.
"""

from __future__ import annotations

import json
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import Deployment, ProcessSet, flower_env, make_tls_certs, wait_for_log

NUM_NODES = 3
CHANCE = 0.1  # digits: 10 classes
# tiny budgets for 2 CI cores; keys the app does not take are dropped (see run_config())
TINY = {
    "dataset": "digits",
    "partitioner": "iid",
    "method": "dm",
    "ipc": 10,
    "iterations": 10,
    "rounds": 1,
    "strategy": "feddm",
    "seed": 0,
    "eval.epochs": 40,
    "eval.num-models": 1,
    "device": "cpu",
    "baseline": "",  # no FedAvg baseline after the main strategy
    "min-nodes": NUM_NODES,  # the ServerApp waits for all three SuperNodes
    "client-threads": 1,
}


def app_config_keys(app: Path) -> set[str]:
    import tomli

    cfg = tomli.loads((app / "pyproject.toml").read_text())
    return set(cfg["tool"]["flwr"]["app"]["config"])


def run_config(app: Path, dep: Deployment, **extra: Any) -> dict[str, Any]:
    """TINY plus ``extra``, restricted to keys the app's run config declares (``flwr run``
    rejects unknown keys); results go to the deployment's folder when the app takes a
    ``results-dir``."""
    keys = app_config_keys(app)
    cfg = {**TINY, **extra}
    if "results-dir" in keys:
        cfg["results-dir"] = str(dep.workdir / "results")
    return {k: v for k, v in cfg.items() if k in keys}


def find_results(dep: Deployment) -> dict[str, Any]:
    """The newest results.json the ServerApp wrote (under the deployment's folder: the
    ``results-dir`` it was given, or the SuperLink's working directory)."""
    found = sorted(dep.workdir.rglob("results.json"), key=lambda p: p.stat().st_mtime)
    assert found, f"no results.json under {dep.workdir}\n{dep.describe()}"
    return json.loads(found[-1].read_text())


def final_accuracy(res: dict[str, Any]) -> float:
    for key in ("accuracy", "final_accuracy", "global_accuracy"):
        if isinstance(res.get(key), int | float):
            return float(res[key])
    rounds = res.get("rounds") or res.get("history") or []
    return float(rounds[-1]["accuracy"])


def client_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-client metrics of the last round, as a list of dicts."""
    clients = res.get("clients")
    if clients is None and res.get("rounds"):
        clients = res["rounds"][-1].get("clients")
    if isinstance(clients, dict):
        return [dict(v, key=k) for k, v in clients.items()]
    return list(clients or [])


def dropped_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    dropped = res.get("dropped")
    if dropped is None and res.get("rounds"):
        dropped = [d for r in res["rounds"] for d in r.get("dropped", [])]
    if isinstance(dropped, dict):
        return [
            dict(v, key=k) if isinstance(v, dict) else {"key": k, "reason": v}
            for k, v in dropped.items()
        ]
    return list(dropped or [])


def run_and_wait(dep: Deployment, app: Path, cfg: dict[str, Any], timeout: float) -> dict:
    run_id = dep.submit(app, cfg)
    info = dep.wait_run(run_id, timeout=timeout)
    assert info["status"] == "finished:completed", (
        f"run {run_id}: {info['status']} {info.get('status-details')}\n"
        f"{dep.run_logs(run_id)}\n{dep.describe()}"
    )
    return info


def check_partitions_served(res: dict[str, Any], expected: set[int]) -> None:
    rows = client_rows(res)
    ids = {int(r["partition-id"]) for r in rows if "partition-id" in r} or {
        int(r["partition_id"]) for r in rows if "partition_id" in r
    }
    if ids:  # the app records which partition each reply came from
        assert ids == expected


# ------------------------------------------------------------------------------------- tests
def test_harness_ends_detached_descendants(tmp_path: Path) -> None:
    """The harness's own guarantee: a child that started a grandchild in a new session (as
    flower-superlink does with flower-superexec) is ended with its whole tree."""
    script = (
        "import subprocess, sys, time;"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'],"
        " start_new_session=True);"
        "time.sleep(600)"
    )
    procs = ProcessSet(tmp_path / "logs", term_timeout=5)
    parent = procs.start("parent", [sys.executable, "-c", script], flower_env(tmp_path / "home"))
    for _ in range(100):
        procs.snapshot()
        if len(procs.seen) >= 2:
            break
        time.sleep(0.1)
    assert len(procs.seen) == 2 and parent.alive()
    procs.stop_all()
    assert not parent.alive()
    assert procs.still_running() == []


@pytest.mark.deployment
def test_three_supernodes_run_feddm(staged_app: Path, make_deployment) -> None:
    """SuperLink + 3 SuperNodes (partition-id 0..2 of 3): one-shot FedDM completes, all
    three clients' sets are used, and the global model beats chance by a wide margin."""
    dep = make_deployment()
    dep.start_superlink()
    dep.start_supernodes(NUM_NODES)
    assert len({n.node_id() for n in dep.nodes}) == NUM_NODES

    run_and_wait(dep, staged_app, run_config(staged_app, dep), timeout=300)

    res = find_results(dep)
    rows = client_rows(res)
    assert len(rows) == NUM_NODES, res
    for row in rows:
        assert row.get("num-examples", row.get("num_examples", 0)) > 0, row
        assert row.get("bytes", 0) > 0, row
    check_partitions_served(res, set(range(NUM_NODES)))
    assert not dropped_rows(res), dropped_rows(res)
    assert final_accuracy(res) > CHANCE + 0.3, res


@pytest.mark.deployment
def test_killed_supernode_is_recorded_and_run_completes(staged_app: Path, make_deployment) -> None:
    """A SuperNode dies (SIGKILL of its whole process group) while its ClientApp distills:
    the run still completes with the other two, and results.json names the lost node."""
    dep = make_deployment()
    dep.start_superlink()
    nodes = dep.start_supernodes(NUM_NODES)
    victim = nodes[-1]
    victim_id = victim.node_id()
    assert victim_id is not None

    cfg = run_config(staged_app, dep, **{"reply-timeout": 150.0})
    run_id = dep.submit(staged_app, cfg)
    # kill once the victim has started its ClientApp for this run (it is then distilling;
    # importing torch alone takes seconds, so it cannot have replied yet)
    started = wait_for_log(victim.proc, r"Start `flwr-clientapp` process", timeout=120)
    assert started, f"victim never started its ClientApp\n{dep.describe()}"
    assert "Sending: train message" not in victim.proc.log_text(), "victim replied before the kill"
    dep.procs.kill(victim.proc)
    assert not victim.proc.alive()

    info = dep.wait_run(run_id, timeout=300)
    assert info["status"] == "finished:completed", (
        f"{info['status']}\n{dep.run_logs(run_id)}\n{dep.describe()}"
    )
    res = find_results(dep)
    rows = client_rows(res)
    assert len(rows) == NUM_NODES - 1, res
    check_partitions_served(res, {0, 1})
    dropped = dropped_rows(res)
    assert len(dropped) == 1, res
    text = json.dumps(dropped[0])
    assert str(victim_id) in text or '"partition-id": 2' in text, dropped
    assert any(k in dropped[0] for k in ("reason", "error")), dropped
    assert final_accuracy(res) > CHANCE + 0.2, res


@pytest.mark.deployment
def test_tls_deployment(staged_app: Path, make_deployment, tmp_path: Path) -> None:
    """TLS on every link: a throwaway CA signs the SuperLink's certificate for 127.0.0.1;
    SuperNodes and the flwr CLI trust only that CA. Plain HTTP is refused; the run completes."""
    tls = make_tls_certs(tmp_path / "certs")
    dep = make_deployment(tls=tls)
    dep.start_superlink()

    ctx = ssl.create_default_context(cafile=str(tls.ca))
    assert httpx.get(f"https://{dep.address}/health", verify=ctx, timeout=10).is_success
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{dep.address}/health", timeout=10).raise_for_status()
    with pytest.raises(httpx.ConnectError):  # a client that does not trust our CA
        httpx.get(f"https://{dep.address}/health", timeout=10)

    dep.start_supernodes(NUM_NODES)
    run_and_wait(dep, staged_app, run_config(staged_app, dep), timeout=300)
    res = find_results(dep)
    assert len(client_rows(res)) == NUM_NODES, res
    assert not dropped_rows(res)
    assert final_accuracy(res) > CHANCE + 0.3, res
