"""The ServerApp's strategies end to end.

Fast tests drive ``run_feddm`` / ``run_fedavg`` through a stand-in Grid that hands each
message to the real ClientApp handler in this process. The slow test runs the real apps on
Flower's Simulation Runtime (Ray) through ``fedistill run``, as a user would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest
from flwr.app import Context, Message, RecordDict
from flwr.common.config import get_fused_config_from_dir
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from clients.client_app import train
from fedistill.wire import RunSettings, load_split
from server.cli import PROJECT_ROOT
from server.results import RunResults, format_table, write_plots
from server.strategies import run_fedavg, run_feddm, unreachable

CHANCE = 0.1
TINY = {
    "method": "random",
    "ipc": 5,
    "eval.model": "mlp",
    "eval.epochs": 40,
    "eval.lr": 0.05,
    "eval.dsa": False,
    "fedavg-lr": 0.05,
    "baseline": "",
    "partitioner": "iid",
}


class LocalGrid(Grid):
    """A Grid whose nodes are ClientApp handlers called in this process."""

    def __init__(self, run_config: dict, num_nodes: int, silent: Iterable[int] = ()) -> None:
        self.contexts = {
            1000 + i: Context(
                run_id=1,
                node_id=1000 + i,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=run_config,
            )
            for i in range(num_nodes)
        }
        self.silent = {1000 + i for i in silent}
        self.received: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        out = []
        for msg in messages:
            self.received.append(msg)
            node = msg.metadata.dst_node_id
            if node not in self.silent:
                out.append(train(msg, self.contexts[node]))
        return out

    def set_run(self, run) -> None:  # pragma: no cover - not used
        raise NotImplementedError

    @property
    def run(self):  # pragma: no cover
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # pragma: no cover
        raise NotImplementedError

    def push_messages(self, messages):  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids):  # pragma: no cover
        raise NotImplementedError


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def setup(tmp_path: Path, num_nodes: int, silent=(), **overrides):
    cfg = get_fused_config_from_dir(PROJECT_ROOT, {**TINY, **overrides})
    s = RunSettings.from_run_config(cfg)
    grid = LocalGrid(cfg, num_nodes, silent)
    results = RunResults(tmp_path, "run", s.to_dict(), s.strategy)
    return s, grid, results, load_split(s.dataset, s.data_root, False)


def test_feddm_drops_every_bad_reply_and_still_trains(tmp_path):
    kinds = ["nan", "shape", "dtype", "labels", "perclass", "oversize", "missing", "raise"]
    malicious = ",".join(f"{i + 2}:{k}" for i, k in enumerate(kinds))
    n = 2 + len(kinds) + 1  # two honest, one per kind, one that never replies
    s, grid, results, test = setup(
        tmp_path, n, silent=[n - 1], malicious=malicious, **{"max-upload-mb": 0.1}
    )
    outcome = run_feddm(grid, s, test, results.main)
    results.main.finish()
    results.finish()

    data = json.loads(results.path.read_text())
    assert data["status"] == "completed"
    assert sorted(int(k) for k in data["clients"]) == [1000, 1001]
    assert [c["partition_id"] for c in data["clients"].values()] == [0, 1]
    assert all(c["bytes"] > 0 and c["num_examples"] > 0 for c in data["clients"].values())
    dropped = {d["node_id"] - 1000: d for d in data["dropped"]}
    assert sorted(dropped) == list(range(2, n))
    expect = {
        "nan": "NaN",
        "shape": "images have shape",
        "dtype": "float32",
        "labels": "labels must lie in",
        "perclass": "images",
        "oversize": "byte cap",
        "missing": "missing",
        "raise": "client error: partition 9",
    }
    for i, kind in enumerate(kinds):
        row = dropped[i + 2]
        assert expect[kind] in row["reason"], (kind, row)
        assert row["round"] == 1
        if kind != "raise":
            assert row["partition_id"] == i + 2  # named by the partition it claimed
    assert "no reply" in dropped[n - 1]["reason"]
    assert dropped[9]["error_code"] == 2  # CLIENT_APP_RAISED_EXCEPTION: alive, just failing
    assert unreachable(data["dropped"]) == {1000 + n - 1}
    assert data["rounds"][0]["kept"] == [1000, 1001]
    assert data["accuracy"] > CHANCE + 0.2, data["accuracy"]  # from two honest clients
    assert data["bytes_up"] >= sum(c["bytes"] for c in data["clients"].values())
    assert outcome.pool is not None and len(outcome.pool) <= 2 * 10 * 5
    table = format_table(data)
    assert "dropped: node 1009" in table and "feddm" in table
    names = {p.name for p in write_plots(results, outcome.pool)}
    assert names == {"accuracy_vs_round.png", "accuracy_vs_bytes.png", "synthetic_pool.png"}


def test_feddm_multi_round_sends_the_global_model(tmp_path):
    s, grid, results, test = setup(tmp_path, 3, rounds=2)
    run_feddm(grid, s, test, results.main)
    data = results.data
    assert [r["round"] for r in data["rounds"]] == [1, 2]
    first, second = grid.received[:3], grid.received[3:]
    assert all("arrays" not in m.content for m in first)
    assert all("arrays" in m.content for m in second)
    assert all(m.content["config"]["server-round"] == 2 for m in second)
    assert data["rounds"][0]["bytes_down"] == 0 < data["rounds"][1]["bytes_down"]
    assert data["bytes_up"] == sum(r["bytes_up"] for r in data["rounds"])
    assert all(r["accuracy"] > CHANCE for r in data["rounds"])


def test_robust_strategy_applies_the_filter(tmp_path, monkeypatch):
    import fedistill.robust

    seen = {}

    def fake_filter(sets, info, *, seed, device):
        seen.update(sets)
        return [k for k in sets if k != 1001], {1001: "outlier (test)"}

    monkeypatch.setattr(fedistill.robust, "filter_sets", fake_filter)
    s, grid, results, test = setup(tmp_path, 3, strategy="feddm-robust")
    run_feddm(grid, s, test, results.main, robust=True)
    assert sorted(seen) == [1000, 1001, 1002]
    row = results.data["dropped"][0]
    assert row["node_id"] == 1001 and row["reason"] == "filtered: outlier (test)"
    assert row["partition_id"] == 1
    assert results.data["rounds"][0]["kept"] == [1000, 1002]


def test_all_replies_bad_is_recorded_not_raised(tmp_path):
    s, grid, results, test = setup(tmp_path, 2, malicious="0:nan,1:raise")
    outcome = run_feddm(grid, s, test, results.main)
    assert outcome.model is None and results.data["accuracy"] is None
    assert len(results.data["dropped"]) == 2


def test_fedavg_with_a_bad_update(tmp_path):
    s, grid, results, test = setup(
        tmp_path, 3, strategy="fedavg", malicious="2:nan", **{"fedavg-rounds": 2}
    )
    run_fedavg(grid, s, test, results.main)
    data = results.data
    assert [r["round"] for r in data["rounds"]] == [1, 2]
    assert all(len(r["clients"]) == 2 for r in data["rounds"])
    assert len(data["dropped"]) == 2  # partition 2, both rounds
    assert all("NaN" in d["reason"] and d["partition_id"] == 2 for d in data["dropped"])
    size = data["rounds"][0]["bytes_down"] // 3
    assert data["bytes_down"] == 2 * 3 * size and data["bytes_up"] == 2 * 3 * size
    assert data["accuracy"] > CHANCE + 0.2, data["rounds"]


# ------------------------------------------------------------------------- the command


def fedistill(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedistill", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=PROJECT_ROOT,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rounds", "0"], "positive integer"),
        (["--strategy", "fedsgd"], "invalid choice"),
        (["-c", "no-such-key=1"], "unknown key"),
        (["-c", "ipc=[1"], "--run-config"),
        (["-c", "method='random' method-options='lr_img=2'"], "takes no option"),
        (["-c", "dataset='mnist' data-root='/nonexistent'"], "not found"),
        (["-c", "aggregator='mean-ish'"], "unknown aggregator"),
        (["-c", "sanitise=true"], "feddm-robust"),
    ],
)
def test_run_rejects_bad_flags_in_one_line(args, message, capsys):
    from fedistill.cli import main

    assert main(["run", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_flower_simulation_end_to_end(tmp_path):
    """The real ServerApp and ClientApp on Flower's Simulation Runtime (Ray), 4 clients on
    digits, partition 3 sends NaNs: it is dropped and named, FedDM and the FedAvg baseline
    both finish, results.json and the plots are written, the table is printed."""
    method = "dm" if _has_method("dm") else "random"
    config = (
        f"method='{method}' iterations=5 ipc=5 eval.epochs=40 eval.num-models=1 eval.dsa=false "
        "eval.model='convnet' eval.lr=0.02 fedavg-rounds=2 malicious='3:nan' partitioner='iid'"
    )
    out = fedistill(
        "run",
        "--num-clients",
        "4",
        "--results-dir",
        str(tmp_path),
        "--run-name",
        "sim",
        "--flwr-home",
        str(tmp_path / "flwr-home"),
        "-c",
        config,
        "--quiet",
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    data = json.loads((tmp_path / "sim" / "results.json").read_text())
    assert data["status"] == "completed"
    assert sorted(c["partition_id"] for c in data["clients"].values()) == [0, 1, 2]
    assert all(c["bytes"] > 0 and c["seconds"] > 0 for c in data["clients"].values())
    assert len(data["dropped"]) == 1 and data["dropped"][0]["partition_id"] == 3
    assert "NaN" in data["dropped"][0]["reason"]
    assert data["accuracy"] > CHANCE + 0.2
    base = data["baseline"]
    assert base["strategy"] == "fedavg" and len(base["rounds"]) == 2
    assert base["bytes_up"] > 10 * data["bytes_up"]  # FedAvg ships whole models
    for name in ("accuracy_vs_round.png", "accuracy_vs_bytes.png", "synthetic_pool.png"):
        assert (tmp_path / "sim" / name).stat().st_size > 1000
    assert "fedavg" in out.stdout and "dropped: node" in out.stdout


def _has_method(name: str) -> bool:
    from fedistill.distill import methods

    return name in methods()


def test_server_main_runs_feddm_then_the_baseline(tmp_path):
    """The ServerApp's main: FedDM, then FedAvg on the nodes that replied; results, plots."""
    from server.server_app import main

    cfg = get_fused_config_from_dir(
        PROJECT_ROOT,
        {
            **TINY,
            "baseline": "fedavg",
            "fedavg-rounds": 1,
            "results-dir": str(tmp_path),
            "run-name": "main",
        },
    )
    grid = LocalGrid(cfg, 3, silent=[2])
    main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=cfg))
    data = json.loads((tmp_path / "main" / "results.json").read_text())
    assert data["status"] == "completed" and data["strategy"] == "feddm"
    assert [d["node_id"] for d in data["dropped"]] == [1002]
    base = data["baseline"]
    assert base["strategy"] == "fedavg" and base["dropped"] == []
    assert sorted(base["clients"]) == ["1000", "1001"]  # the silent node is not asked again
    assert base["accuracy"] > CHANCE and data["accuracy"] > CHANCE
    assert (tmp_path / "main" / "accuracy_vs_bytes.png").is_file()


@pytest.mark.parametrize("secure", [True, False])
def test_private_method_reports_epsilon_per_client(tmp_path, secure):
    """DP-PSG's ε (computed by its accountant) reaches the results and the table; a client
    whose noise is replayable from its seed is marked there as no guarantee."""
    options = "outer_loop=1,batch_loop=1,inner_loop=1,width=16"
    if not secure:
        options += ",secure_noise=false"
    s, grid, results, test = setup(
        tmp_path, 2, method="psg", iterations=1, ipc=2, **{"method-options": options}
    )
    run_feddm(grid, s, test, results.main)
    clients = results.data["clients"].values()
    assert len(clients) == 2
    for c in clients:
        assert 0 < c["epsilon"] <= 10.0 and c["delta"] == 1e-5
        assert c["noise_secure"] == int(secure) and c["private_steps"] > 0
    table = format_table(results.data)
    assert "∞" not in table.split("strategy")[0]
    assert ("ε is no guarantee" in table) is not secure


def test_unreachable_nodes_are_timeouts_and_unavailable_nodes():
    rows = [
        {"node_id": 1, "reason": "no reply within 5 s"},
        {"node_id": 2, "reason": "client error: gone", "error_code": 5},  # NODE_UNAVAILABLE
        {"node_id": 3, "reason": "client error: boom", "error_code": 2},
        {"node_id": 4, "reason": "invalid reply: NaN", "partition_id": 4},
    ]
    assert unreachable(rows) == {1, 2}


def test_run_takes_the_apps_the_project_names(tmp_path):
    """``fedistill run`` honours ``[tool.flwr.app.components]`` instead of hard-coding ours."""
    from server.cli import RunError, app_components

    assert app_components(PROJECT_ROOT) == ("server.server_app:app", "clients.client_app:app")
    (tmp_path / "pyproject.toml").write_text(
        '[tool.flwr.app.components]\nserverapp = "mine.server:app"\nclientapp = "mine.client:app"\n'
    )
    assert app_components(tmp_path) == ("mine.server:app", "mine.client:app")
    (tmp_path / "pyproject.toml").write_text('[tool.flwr.app.components]\nserverapp = "a:b"\n')
    with pytest.raises(RunError, match="lacks 'clientapp'"):
        app_components(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    with pytest.raises(RunError, match=r"no \[tool.flwr.app\] table"):
        app_components(tmp_path)


def test_the_app_and_the_simulation_run_one_engine(tmp_path, digits_train):
    """The same four clients' sets (partition 3 scaled by 1e30: finite, well-formed, absurd)
    through the Flower path (run_feddm over the ClientApp) and the in-process simulation: the
    same global accuracy, the same kept clients, the same reason for the dropped one."""
    import torch

    from fedistill.federated import simulate_feddm
    from fedistill.synthetic import SyntheticSet

    s, grid, results, test = setup(tmp_path, 4, malicious="3:scale")
    outcome = run_feddm(grid, s, test, results.main)
    flower = results.main.data["rounds"][-1]

    def scale(cid: int, syn: SyntheticSet) -> SyntheticSet:
        return syn if cid != 3 else SyntheticSet(syn.images * 1e30, syn.labels, dict(syn.meta))

    sim = simulate_feddm(
        load_split(s.dataset, s.data_root, True),
        test,
        num_clients=4,
        partitioner=s.partitioner,
        alpha=s.alpha,
        method=s.method,
        ipc=s.ipc,
        eval_cfg=s.eval_config(),
        seed=s.seed,
        set_tamper=scale,
    )
    assert flower["kept"] == [1000, 1001, 1002] and sim.kept == [0, 1, 2]
    assert flower["accuracy"] == sim.accuracy > CHANCE + 0.3
    (drop,) = flower["dropped"]
    assert drop["node_id"] == 1003 and drop["partition_id"] == 3
    assert drop["reason"] == sim.rejected[3] and "plausible range" in drop["reason"]
    for a, b in zip(outcome.model.parameters(), sim.model.parameters(), strict=True):
        assert torch.equal(a, b)  # the same global model, bit for bit


def test_the_app_runs_fedavg_with_a_robust_rule_from_its_run_config(tmp_path, monkeypatch):
    """``aggregator`` / ``num-malicious`` in the run config reach the ServerApp's FedAvg (which
    runs Flower's own rule)."""
    import server.server_app as server_app

    seen = {}
    real = server_app.run_fedavg

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(server_app, "run_fedavg", spy)
    cfg = get_fused_config_from_dir(
        PROJECT_ROOT,
        {
            **TINY,
            "strategy": "fedavg",
            "fedavg-rounds": 2,
            "aggregator": "multikrum",
            "num-malicious": 1,
            "results-dir": str(tmp_path),
            "run-name": "robust",
        },
    )
    ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=cfg)
    server_app.main(LocalGrid(cfg, 4), ctx)
    assert seen["aggregator"] == "multikrum" and seen["num_malicious"] == 1
    data = json.loads((tmp_path / "robust" / "results.json").read_text())
    assert data["status"] == "completed" and data["accuracy"] > CHANCE + 0.2
