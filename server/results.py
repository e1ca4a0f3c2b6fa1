"""Run results: one ``results/<run-name>/results.json`` per run, rewritten after every round
(so a crash loses nothing), plus PNG plots and the printed summary table.

Layout of results.json (main strategy at the top level; the FedAvg baseline, when the run has
one, under ``"baseline"`` with the same keys)::

    {"run_name", "status": running|completed|failed, "error", "config": {run config},
     "strategy", "accuracy", "accuracies", "rounds": [{"round", "accuracy", "bytes_up",
        "bytes_down", "cum_bytes_up", "server_seconds", "client_seconds_max",
        "clients": {node_id: {partition_id, num_examples, seconds, bytes, epsilon, ...,
                              client_reported: [names of the figures above that the client
                              reported and the server could only check for validity]}},
        "dropped": [{"node_id", "partition_id", "round", "reason"}], "kept": [node_id]}],
     "clients": {node_id: metrics of the last round}, "dropped": [... all rounds ...],
     "bytes_up", "bytes_down", "server_seconds", "client_seconds", "wall_seconds",
     "overhead_seconds", "baseline": {...}}
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from fedistill.plots import pyplot, save_grid
from fedistill.synthetic import SyntheticSet


class Section:
    """One strategy's part of the results (the main run, or the baseline)."""

    def __init__(self, data: dict[str, Any], owner: RunResults) -> None:
        self.data, self.owner = data, owner
        self._t0 = time.perf_counter()

    def add_round(
        self,
        rnd: int,
        *,
        accuracy: float | None,
        bytes_up: int,
        bytes_down: int,
        clients: dict[int, dict[str, Any]],
        dropped: list[dict[str, Any]],
        kept: list[int] | None = None,
        server_seconds: float = 0.0,
        extra: dict[str, Any] | None = None,
    ) -> None:
        d = self.data
        seconds = [float(m.get("seconds", 0.0)) for m in clients.values()]
        entry = {
            "round": rnd,
            "accuracy": accuracy,
            "bytes_up": int(bytes_up),
            "bytes_down": int(bytes_down),
            "cum_bytes_up": d["bytes_up"] + int(bytes_up),
            "server_seconds": server_seconds,
            "wall_seconds": time.perf_counter() - self._t0,  # when this round's accuracy was known
            "client_seconds_max": max(seconds, default=0.0),
            "clients": {str(k): v for k, v in clients.items()},
            "dropped": [dict(x, round=rnd) for x in dropped],
            "kept": kept if kept is not None else sorted(clients),
        }
        entry.update(extra or {})
        d["rounds"].append(entry)
        d["bytes_up"] += int(bytes_up)
        d["bytes_down"] += int(bytes_down)
        d["server_seconds"] += server_seconds
        d["client_seconds"] += sum(seconds)
        d["clients"] = entry["clients"]
        d["dropped"].extend(entry["dropped"])
        if accuracy is not None:
            d["accuracy"] = accuracy
        self.owner.flush()

    def set(self, **values: Any) -> None:
        self.data.update(values)
        self.owner.flush()

    def finish(self) -> None:
        d = self.data
        d["wall_seconds"] = time.perf_counter() - self._t0
        busy = sum(r["client_seconds_max"] + r["server_seconds"] for r in d["rounds"])
        d["overhead_seconds"] = max(0.0, d["wall_seconds"] - busy)
        self.owner.flush()


def _empty(strategy: str) -> dict[str, Any]:
    return {
        "strategy": strategy,
        "accuracy": None,
        "accuracies": [],
        "rounds": [],
        "clients": {},
        "dropped": [],
        "bytes_up": 0,
        "bytes_down": 0,
        "server_seconds": 0.0,
        "client_seconds": 0.0,
        "wall_seconds": 0.0,
        "overhead_seconds": 0.0,
    }


class RunResults:
    """The results file of one run; every change is written at once (atomically)."""

    def __init__(self, root: str | Path, run_name: str, config: dict[str, Any], strategy: str):
        self.dir = Path(root) / run_name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "results.json"
        self._t0 = time.perf_counter()
        self.data: dict[str, Any] = {
            "run_name": run_name,
            "status": "running",
            "error": None,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "config": config,
            **_empty(strategy),
        }
        self.main = Section(self.data, self)
        self.flush()

    def baseline(self, strategy: str) -> Section:
        self.data["baseline"] = _empty(strategy)
        return Section(self.data["baseline"], self)

    def flush(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=_jsonable))
        os.replace(tmp, self.path)

    def finish(self, status: str = "completed", error: str | None = None) -> None:
        self.data["status"] = status
        self.data["error"] = error
        self.data["total_wall_seconds"] = time.perf_counter() - self._t0
        self.flush()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


# --------------------------------------------------------------------------- plots


def _sections(data: dict[str, Any]) -> list[dict[str, Any]]:
    out = [data]
    if data.get("baseline"):
        out.append(data["baseline"])
    return out


def plot_accuracy_vs_round(data: dict[str, Any], path: str | Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for sec in _sections(data):
        pts = [(r["round"], r["accuracy"]) for r in sec["rounds"] if r["accuracy"] is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=sec["strategy"])
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{data['config'].get('dataset', '')} · {data['run_name']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_accuracy_vs_bytes(
    sections: list[dict[str, Any]], path: str | Path, title: str = ""
) -> Path:
    """Accuracy against cumulative bytes uploaded, one curve per strategy (log x)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for sec in sections:
        pts = [
            (r["cum_bytes_up"], r["accuracy"])
            for r in sec["rounds"]
            if r["accuracy"] is not None and r["cum_bytes_up"] > 0
        ]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=sec["strategy"])
    ax.set_xscale("log")
    ax.set_xlabel("bytes uploaded by all clients (cumulative)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def write_plots(results: RunResults, pool: SyntheticSet | None = None) -> list[Path]:
    """accuracy_vs_round.png, accuracy_vs_bytes.png and (FedDM) synthetic_pool.png."""
    data, out = results.data, []
    if any(r["accuracy"] is not None for s in _sections(data) for r in s["rounds"]):
        out.append(plot_accuracy_vs_round(data, results.dir / "accuracy_vs_round.png"))
        out.append(
            plot_accuracy_vs_bytes(
                _sections(data), results.dir / "accuracy_vs_bytes.png", data["run_name"]
            )
        )
    if pool is not None:
        out.append(save_grid(pool, results.dir / "synthetic_pool.png", max_per_class=30))
    return out


# --------------------------------------------------------------------------- summary table


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _fmt_acc(a: Any) -> str:
    return f"{100 * a:.2f} %" if isinstance(a, int | float) and math.isfinite(a) else "-"


def format_table(data: dict[str, Any]) -> str:
    """The end-of-run summary: per-client ε / bytes / seconds, then accuracy vs the baseline."""
    lines = []
    lines.append(
        f"run {data['run_name']} ({data.get('status')}): {data['strategy']} on "
        f"{data['config'].get('dataset')}, {data['config'].get('method')} ipc "
        f"{data['config'].get('ipc')}, {len(data['rounds'])} round(s)"
    )
    lines.append(
        f"{'client':>8} {'partition':>9} {'examples*':>9} {'ε*':>8} {'bytes up':>10} "
        f"{'seconds*':>8}"
    )
    replayable = False
    for node, m in sorted(data["clients"].items(), key=lambda kv: kv[1].get("partition_id", 0)):
        eps = m.get("epsilon")
        eps_text = f"{eps:.3g}" if eps is not None else "∞ (none)"
        if eps is not None and m.get("noise_secure") == 0:
            eps_text, replayable = eps_text + " !", True
        lines.append(
            f"{str(node)[-8:]:>8} {int(m.get('partition_id', -1)):>9} "
            f"{int(m.get('num_examples', 0)):>9} {eps_text:>8} "
            f"{_fmt_bytes(m.get('bytes', 0)):>10} {m.get('seconds', 0.0):>8.1f}"
        )
    lines.append("  * client-reported: checked for validity, not verified by the server")
    if replayable:
        lines.append(
            "  ! DP noise replayable from the seed (secure_noise=False): ε is no guarantee"
        )
    for d in data["dropped"]:
        lines.append(
            f"  dropped: node {d.get('node_id')} (partition {d.get('partition_id', '?')}) in "
            f"round {d.get('round')}: {d.get('reason')}"
        )
    lines.append(
        f"{'strategy':>14} {'rounds':>6} {'accuracy':>9} {'bytes up':>10} "
        f"{'bytes down':>10} {'seconds':>8}"
    )
    for sec in _sections(data):
        lines.append(
            f"{sec['strategy']:>14} {len(sec['rounds']):>6} {_fmt_acc(sec['accuracy']):>9} "
            f"{_fmt_bytes(sec['bytes_up']):>10} {_fmt_bytes(sec['bytes_down']):>10} "
            f"{sec.get('wall_seconds', 0.0):>8.1f}"
        )
    return "\n".join(lines)
