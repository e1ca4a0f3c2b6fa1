"""``report.md``: the matrix table, its budgets, what is missing and the timings."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from attacks.matrix.config import CELLS, FEDAVG
from attacks.targets import REAL

# =========================================================================== report.md


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.{digits}f}"


def _pct(x: Any) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _eps(x: Any) -> str:
    return "—" if x is None else f"{x:.3g}"


def cell_summary(report: dict[str, Any], name: str, kind: str) -> dict[str, Any] | None:
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
    s = lambda kind: cell_summary(report, name, kind)  # noqa: E731
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
    repo = Path(__file__).resolve().parents[2]
    try:
        return str(path.resolve().relative_to(repo))
    except ValueError:
        return str(path)
