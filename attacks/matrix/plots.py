"""The matrix's plots: LiRA ROC per row, backdoor ASR and clean accuracy, poisoning drops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from attacks.matrix.render import cell_summary

# =========================================================================== plots


def write_plots(report: dict[str, Any], folder: str | Path) -> dict[str, str]:
    """The LiRA log-log ROC of every row, each row's model and set ROCs with both populations,
    the memorisation pictures, backdoor ASR / clean accuracy, poisoning drops."""
    folder = Path(folder)
    out: dict[str, str] = {}
    p = plot_lira_rocs(report, folder / "roc_lira.png")
    if p:
        out["LiRA (online) ROC per pipeline, log-log"] = str(p)
    for name, cells in report["cells"].items():
        c = cells.get("mia")
        if c and c.get("status") == "ok" and c["result"].get("plot"):
            out[f"MIA ROC of `{name}`'s model (loss, LiRA, RMIA; all and exposed members)"] = c[
                "result"
            ]["plot"]
        c = cells.get("mia_set")
        if c and c.get("status") == "ok":
            if c["result"].get("plot"):
                out[f"MIA ROC on `{name}`'s set (nearest-image distances; all and exposed)"] = c[
                    "result"
                ]["plot"]
            png = (c["result"].get("memorisation") or {}).get("png")
            if png:
                out[f"`{name}`: each synthetic image beside its nearest real one"] = png
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
    from fedistill.plots import pyplot

    plt = pyplot()
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
    rows, asr, clean, base, rand, naive = [], [], [], [], [], []
    for name in report["cells"]:
        s = cell_summary(report, name, "backdoor")
        if s is None:
            continue
        rows.append(name)
        asr.append(s["asr"])
        clean.append(s["clean_accuracy"])
        base.append(s.get("baseline_asr"))
        rand.append(s.get("random_trigger_asr"))
        naive.append(s.get("naive_asr"))
    if not rows:
        return None
    series = {"ASR": asr, "clean accuracy": clean}
    if any(b is not None for b in base):
        series["ASR of the clean pipeline"] = base
    if any(r is not None for r in rand):  # DOORPING rows: its controls from the same loop
        series["DOORPING's random-trigger control"] = rand
        series["NAIVE in DOORPING's loop"] = naive
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
        a = cell_summary(report, name, "poisoning")
        b = cell_summary(report, name, "poisoning_defended")
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
        series["robust filter (FedAvg: worst robust aggregator)"] = defended
    return _bars(
        rows,
        series,
        "accuracy drop (points)",
        f"Poisoning {po['attack']}: {po['m']} of {po['n']} clients",
        path,
    )
