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


def _pm(x: Any, std: Any) -> str:
    """A rate in % with its std over the final models where there is one."""
    return _pct(x) + ("" if std is None or x is None else f" ± {100 * std:.1f}")


def _eps(x: Any) -> str:
    return "—" if x is None else f"{x:.3g}"


def cell_summary(report: dict[str, Any], name: str, kind: str) -> dict[str, Any] | None:
    c = report["cells"].get(name, {}).get(kind)
    return c.get("summary") if c and c.get("status") == "ok" else None


COLUMNS = (
    ("ε", "utility"),
    ("utility acc %", "utility"),
    ("MIA on the set: TPR@1%FPR exposed", "mia_set"),
    ("MIA LiRA: TPR@1%FPR exposed · all", "mia"),
    ("backdoor ASR % (clean pipeline)", "backdoor"),
    ("same models: target-class % on clean images", "backdoor"),
    ("backdoor clean acc %", "backdoor"),
    ("poison acc drop (pts)", "poisoning"),
    ("drop with defence (pts)", "poisoning_defended"),
    ("defence FRR", "poisoning_defended"),
    ("DP audit ε_lb / ceiling (claim)", "dp_audit"),
)


def tpr_text(pops: dict[str, Any] | None, pop: str, fpr: str = "0.01", ci: bool = True) -> str:
    """A population's TPR at ``fpr`` as measured: ``"0.98 [0.93, 1.00]"``, or ``"< x"`` below
    the FPR resolution; "—" where the population is absent (nothing exposed)."""
    cell = (pops or {}).get(pop)
    if not cell:
        return "—"
    text = cell["tpr_at_fpr_text"][fpr]
    return text if ci else text.split(" [")[0]


def dp_audit_text(a: dict[str, Any]) -> str:
    """An ε lower bound as evidence: beside its ceiling (the largest bound the trial count can
    show) and the claim; "inconclusive" where the ceiling is below the claim (no claim = ∞)."""
    lb, ceil = a["epsilon_lb"], a.get("ceiling", a.get("epsilon_lb_ceiling"))
    claim = a.get("claimed_epsilon")
    claim_text = "∞" if claim is None else f"{claim:.3g}"
    verdict = a.get("verdict")
    if verdict == "violation":
        return f"⚠ {lb:.2f} > claim {claim_text} (ceiling {ceil:.2f})"
    if verdict == "inconclusive":
        return f"inconclusive: {lb:.2f}, ceiling {ceil:.2f} < claim {claim_text}"
    acc = a.get("accountant_epsilon")
    acc_text = "" if acc is None else f", accountant {acc:.2f}"
    return f"{lb:.2f} ≤ {claim_text} (ceiling {ceil:.2f}{acc_text})"


def _best_set_distance(s: dict[str, Any], view: str = "distances") -> str | None:
    """The set-level distance that finds the most exposed (else all) members at 1% FPR, on
    the decoded images (``view="distances"``) or as received (``"received_distances"``: a
    factorised set's tiles or bases; ``None`` for an ordinary set or an older report)."""
    dists = s.get(view) or {}

    def key(d: str) -> float:
        pops = dists[d]
        return (pops.get("exposed") or pops["all"])["tpr_at_fpr"]["0.01"]

    return max(dists, key=key) if dists else None


def _row_cells(report: dict[str, Any], name: str) -> list[str]:
    s = lambda kind: cell_summary(report, name, kind)  # noqa: E731
    u, mia, bd, ms = s("utility"), s("mia"), s("backdoor"), s("mia_set")
    po, pd, dp = s("poisoning"), s("poisoning_defended"), s("dp_audit")
    eps = _eps(u and u.get("epsilon"))
    if eps == "—" and u and u.get("rho"):
        eps = f"— (KIP-ρ {u['rho']:g})"  # ρ is a privacy knob without an ε
    cells = [eps, _pct(u and u.get("accuracy"))]
    best = _best_set_distance(ms) if ms else None
    text = tpr_text(ms["distances"][best], "exposed", ci=False) if best else "—"
    rbest = _best_set_distance(ms, "received_distances") if ms else None
    if rbest:  # a factorised set: also as the server receives it
        text += f" (received {tpr_text(ms['received_distances'][rbest], 'exposed', ci=False)})"
    cells.append(text)
    if mia and "populations" in mia:
        lira = mia["populations"]["lira_online"]
        cells.append(f"{tpr_text(lira, 'exposed', ci=False)} · {tpr_text(lira, 'all', ci=False)}")
    else:
        cells.append("—")
    if bd:
        base = bd.get("baseline_asr")
        mark = " †" if str(bd.get("kind", "")).startswith("doorping") else ""
        cells += [
            _pm(bd["asr"], bd.get("asr_std"))
            + (f" ({_pct(base)})" if base is not None else "")
            + mark,
            _pm(bd.get("clean_target_rate"), bd.get("clean_target_rate_std")),
            _pm(bd["clean_accuracy"], bd.get("clean_accuracy_std")),
        ]
    else:
        cells += ["—"] * 3
    cells.append(_pct(po["accuracy_drop"]) if po else "—")
    if pd and "accuracy_drops" in pd:  # FedAvg: the robust aggregators against its attack
        from attacks.matrix.render_attacks import AGGREGATOR_SHORT

        drops = pd["accuracy_drops"][pd["attack"]]
        cells += [
            " · ".join(
                f"{AGGREGATOR_SHORT.get(a, a)} {_pct(drops[a])}" for a in drops if a != "fedavg"
            ),
            "—",
        ]
    elif pd:
        cells += [_pct(pd["accuracy_drop"]), _fmt(pd["false_rejection_rate"], 2)]
    else:
        cells += ["—"] * 2
    if dp:
        text = dp_audit_text(dp)
        if dp.get("white_box"):
            text += f"; white-box: {dp_audit_text(dp['white_box'])}"
        cells.append(text)
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


MIA_COLUMNS = (
    "members (exposed)",
    "set: TPR@1%FPR exposed",
    "set: TPR@1%FPR all",
    "set: TPR@0.1%FPR exposed",
    "LiRA: TPR@1%FPR exposed",
    "LiRA: TPR@1%FPR all",
    "RMIA: TPR@1%FPR exposed",
    "RMIA: TPR@1%FPR all",
    "loss: TPR@1%FPR all",
    "LiRA AUC all",
    "attacked acc % (full data)",
)


def _auc_text(pops: dict[str, Any], pop: str) -> str:
    cell = pops.get(pop)
    if not cell:
        return "—"
    lo, hi = cell["ci95"]["auc"]
    return f"{cell['auc']:.3f} [{lo:.3f}, {hi:.3f}]"


def mia_table(report: dict[str, Any]) -> list[str]:
    """Membership inference, both populations side by side with 95% intervals: on the set the
    pipeline released (the server's view; the distance that finds most) and on the model
    trained on it (LiRA, RMIA, loss)."""
    head = ["pipeline", *MIA_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    shown = False
    for row in report["rows"]:
        name = row["name"]
        ms, mia = cell_summary(report, name, "mia_set"), cell_summary(report, name, "mia")
        if not (ms or (mia and "populations" in mia)):
            continue
        shown = True
        c = report["cells"][name]
        b = (c.get("mia") or c.get("mia_set") or {}).get("budget", {})
        exposed = b.get("exposed")
        cells = [f"{b.get('members', '—')} ({'—' if exposed is None else exposed})"]
        best = _best_set_distance(ms) if ms else None
        if best:
            d = ms["distances"][best]
            cells += [
                tpr_text(d, "exposed") + f" ({best})",
                tpr_text(d, "all"),
                tpr_text(d, "exposed", "0.001"),
            ]
        else:
            cells += ["—"] * 3
        if mia and "populations" in mia:
            p = mia["populations"]
            u = mia.get("utility") or {}
            cells += [
                tpr_text(p["lira_online"], "exposed"),
                tpr_text(p["lira_online"], "all"),
                tpr_text(p["rmia"], "exposed"),
                tpr_text(p["rmia"], "all"),
                tpr_text(p["loss"], "all"),
                _auc_text(p["lira_online"], "all"),
                f"{_pct(u.get('attacked'))} ({_pct(u.get('full_data'))})",
            ]
        else:
            cells += ["—"] * 7
        lines.append("| " + " | ".join([f"`{name}`", *cells]) + " |")
    return lines if shown else []


def _sure(cell: dict[str, Any], fpr: float = 0.01) -> bool:
    """Whether a TPR beats chance (TPR = FPR) beyond its 95% interval."""
    return cell["ci95"]["tpr_at_fpr"][f"{fpr:g}"][0] > fpr


def leak_sentences(report: dict[str, Any]) -> list[str]:
    """One sentence per row: what leaks, to whom, and how surely (with the interval); counts
    per target pipeline."""
    out = []
    for row in report["rows"]:
        name = row["name"]
        ms, mia = cell_summary(report, name, "mia_set"), cell_summary(report, name, "mia")
        if not (ms or (mia and "populations" in mia)):
            continue
        parts = []
        best = _best_set_distance(ms) if ms else None
        if best:
            b = report["cells"][name]["mia_set"]["budget"]
            d = ms["distances"][best]
            targets = max(1, int(b.get("num_targets") or 1))
            if d.get("exposed"):
                who = f"the {b['exposed'] // targets} images each set copied or started from"
                cell = d["exposed"]
            else:
                who = f"its {b['members'] // targets} members"
                cell = d["all"]
            if _sure(cell):
                parts.append(
                    f"anyone holding the set finds {who} at 1% FPR with TPR "
                    f"{tpr_text(d, 'exposed' if d.get('exposed') else 'all')} (nearest-image "
                    f"distance `{best}`, {targets} independent target sets)"
                )
            else:
                parts.append(
                    f"no attack on the set tells {who} from non-members beyond chance (TPR "
                    f"{tpr_text(d, 'all')} at 1% FPR)"
                )
            from attacks.matrix.render_attacks import received_leak

            parts += received_leak(ms)
        if mia and "populations" in mia:
            p = mia["populations"]
            mb = report["cells"][name]["mia"]["budget"]
            best_m = max(
                ("lira_online", "rmia"),
                key=lambda a: p[a].get("exposed", p[a]["all"])["tpr_at_fpr"]["0.01"],
            )
            label = {"lira_online": "LiRA", "rmia": "RMIA"}[best_m]
            split = p[best_m].get("exposed") and mb.get("exposed") != mb.get("members")
            headline = p[best_m]["exposed"] if split else p[best_m]["all"]
            if not _sure(headline):
                parts.append(
                    f"nor does any on the trained model ({label}: "
                    f"{tpr_text(p[best_m], 'all')} at 1% FPR)"
                )
            elif split:
                parts.append(
                    f"from the trained model {label} reaches {tpr_text(p[best_m], 'exposed')} "
                    f"on the exposed members and {tpr_text(p[best_m], 'all')} on all members"
                )
            else:
                parts.append(
                    f"from the trained model {label} reaches {tpr_text(p[best_m], 'all')} on its "
                    "members"
                )
        out.append(f"- `{name}`: " + "; ".join(parts) + ".")
    return out


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
        seeds = (cfg.get("backdoor") or {}).get("models")
        per_cell = "one model per cell" + (
            f" ({seeds} seeds in the backdoor cells)" if seeds else ""
        )
        lines.append(f"- **Final model** ({who}): {proto}; {per_cell}.")
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
            pops = s.get("populations", {}).get("lira_online", {}).get("all")
            n_out = pops["n_out"] if pops else s["lira_online"]["n_out"]
            targets = b.get("num_targets", 1)
            lines.append(
                f"- **MIA**: candidates are a pool of {b['pool_size']} training images; every "
                f"pipeline (target or shadow) runs whole on a random half of it (*members*); "
                f"*exposed* members are those the pipeline provably touched (copied by "
                f"`random`, the initialisation images of real-init methods), recorded by the "
                f"method itself. Model attacks: K = {b['num_shadows']} shadow pipelines, "
                f"{targets} independent target(s) ({n_out} non-member trials: FPR resolution "
                f'{1 / n_out:.2g}; a TPR below it prints as "< x"); LiRA online '
                f"({'fixed' if b['lira'].get('fixed_variance') else 'per-example'} variance, "
                f"IN side fitted on shadows that exposed the candidate where exposure is "
                f"recorded), RMIA (Zarifzadeh et al. 2024), loss threshold. Set attacks (the "
                f"server's view): each candidate's distance to the nearest synthetic image of "
                f"its class (`l2` normalised pixels, `l2_shift` after removing each class's "
                f"mean shift, `embed` a fixed random ConvNet), the best of them shown. 95% "
                f"intervals: stratified bootstrap over candidates widened to Clopper–Pearson "
                f"at the threshold. Leave-one-out pooled figures (dependent trials) and TPR at "
                f"0.1% FPR of every attack are in report.json."
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
            f"- **Backdoor**: NAIVE, p = {bd['p']} of the training images stamped "
            f"with a {patch} and relabelled to class {bd['target']} before distillation (the "
            f"`real` row trains on the poisoned real data); ASR = triggered non-target test "
            f"images classified as {bd['target']}; beside it the *same* models' rate of class "
            f"{bd['target']} on clean non-target images (a high one means the model predicts the "
            "target class anyway, not that the trigger works) and their clean accuracy; each "
            f"mean ± std over {bd.get('models', 1)} final-model seeds; in parentheses the ASR of "
            "the clean pipeline's models with the same trigger (the control)."
        )
        if bd["kind"] == "doorping":
            from attacks.matrix.render_attacks import doorping_text

            lines.append(doorping_text(report, bd))
    po = cfg.get("poisoning")
    if po:
        lines.append(
            f"- **Poisoning**: `{po['attack']}` by {po['m']} of {po['n']} clients "
            f"({po['partitioner']}, α = {po['alpha']}), one-shot FedDM with each row's method "
            f"and IPC; drop = clean federation's global test accuracy − attacked (points). "
            f"Defence: the robust filter (fedistill.robust, pairwise cross-scoring + feature "
            f"statistics); FRR = share of honest clients it rejected."
            + (
                f" `fedavg`: FedAvg {po['fedavg_rounds']} rounds on the same partitions; "
                "the filter does not apply to model updates, so its defended cell is robust "
                "aggregation (FedMedian, FedTrimmedAvg, MultiKrum: drop per rule) against label "
                f"flip, an update scaled by {po.get('scale', 10)} and an inflated example count."
                if po.get("fedavg")
                else " No FedAvg row (disabled in the config)."
            )
        )
    dp = cfg.get("dp_audit")
    if dp:
        lines.append(
            f"- **DP audit**: black-box, {dp['num_runs']} runs of the pipeline on "
            f"{dp['base_size']} base images + a random half of {dp['canaries_per_run']} "
            f"{dp['canary']} canaries; threshold chosen on half the runs, ε lower bound from "
            f"Clopper–Pearson ({dp['confidence']:.0%}) bounds on FPR/FNR of the other half, "
            "shown beside its ceiling (the largest bound that trial count can show) and the "
            'claim; "inconclusive" where the ceiling is below the claim (a model that is not '
            "private claims ε = ∞). Several canaries per run share models, so that interval is "
            f"heuristic. DP-PSG rows add the white-box audit ({dp.get('white_box_trials', 10000)} "
            "trials of the mechanism with a gradient canary of norm C in every step, on the "
            "training split's size; `experiments/bench_dp_audit.py` has its controls)."
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


def kept_section(report: dict[str, Any]) -> list[str]:
    """Cells taken from an earlier run (``--keep-from``), by run: which, when, at what commit."""
    runs: dict[tuple, list[str]] = {}
    for name, cells in report["cells"].items():
        for kind, c in cells.items():
            if c.get("kept_from"):
                k = c["kept_from"]
                runs.setdefault((k.get("started"), k.get("git_commit")), []).append(
                    f"`{name}` · {kind}"
                )
    lines = []
    for (started, commit), cells in runs.items():
        lines.append(
            f"Kept from the run started {started} (commit {commit or '?'}), measured under the "
            f"same dataset, seed, budget, row and attack section: {', '.join(cells)}. The "
            "command without `--keep-from` measures every cell afresh."
        )
    return [*lines, ""] if lines else []


def timings_section(report: dict[str, Any]) -> list[str]:
    """Wall-clock seconds per cell, CPU seconds of this process in parentheses."""
    kinds = [k for k in CELLS if any(k in c for c in report["cells"].values())]
    head = ["pipeline", *kinds, "total"]
    lines = [
        "#### Timings",
        "",
        "Wall-clock seconds (this process's CPU seconds, all threads); *kept*: measured by the "
        "earlier run named above.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]

    def fmt(wall: float | None, cpu: float | None, kept: bool = False) -> str:
        if wall is None:
            return "—"
        return f"{wall:.0f} ({cpu or 0:.0f})" + (" kept" if kept else "")

    for name, cells in report["cells"].items():
        vals = [
            (cells[k]["seconds"], cells[k].get("cpu_seconds"), bool(cells[k].get("kept_from")))
            if k in cells and cells[k]["status"] != "skipped"
            else (None, None, False)
            for k in kinds
        ]
        wall = sum(w for w, _, _ in vals if w is not None)
        cpu = sum(c for _, c, _ in vals if c is not None)
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
    ]
    mia = mia_table(report)
    if mia:
        lines += [
            "#### Membership inference: exposed members beside all members",
            "",
            *mia,
            "",
            "What leaks, row by row:",
            "",
            *leak_sentences(report),
            "",
        ]
    from attacks.matrix.render_attacks import defence_table, received_table

    received = received_table(report)
    if received:
        lines += [
            "#### The set as the server receives it: factorised sets",
            "",
            *received,
            "",
            "A factorised set travels as a code the library decodes: IDC's stored images hold "
            "f×f tiles, HaBa's are bases beside hallucinator weights. *Decoded*: the attack on "
            "the images a model trains on (the columns above); *received*: on what travelled, "
            "without the decoder — every IDC tile against the candidates area-downsampled by f "
            "(what IDC's real initialisation writes into a tile), HaBa's bases against the "
            "candidates as they are.",
            "",
        ]

    defences = defence_table(report)
    if defences:
        lines += [
            "#### Poisoning defences: FedDM + robust filter beside FedAvg + robust aggregation",
            "",
            *defences,
            "",
            "Drop = the clean federation's global test accuracy − the attacked one, in points "
            "(FedDM: against the clean federation without the filter, so the filter's own cost "
            "counts; FedAvg: against the clean federation under the same rule); the same "
            "clients, partitions and malicious share in both federations. FedAvg's rules are "
            "the library's twins of Flower's FedAvg, FedMedian, FedTrimmedAvg and MultiKrum "
            "(MultiKrum told the true number of attackers).",
            "",
        ]
    lines += [
        *budgets_section(report),
        "",
    ]
    if report.get("command"):
        lines += ["Produced by:", "", "```bash", report["command"], "```", ""]
    lines += kept_section(report)
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
