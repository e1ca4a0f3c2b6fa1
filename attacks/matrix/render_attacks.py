"""report.md's poisoning-defence table (FedDM + robust filter beside FedAvg + robust
aggregation), its DOORPING paragraph and the set-level attack on factorised sets as received;
the rest of the report is :mod:`attacks.matrix.render`,
which imports these where it uses them."""

from __future__ import annotations

from typing import Any

from attacks.matrix.render import (
    _best_set_distance,
    _fmt,
    _pct,
    _pm,
    _sure,
    cell_summary,
    tpr_text,
)

AGGREGATOR_SHORT = {"median": "median", "trimmed-mean": "trim", "multikrum": "krum"}
FEDAVG_ATTACK_TEXT = {
    "label_flip": "label flip",
    "scaled_update": "scaled update",
    "inflated_count": "inflated count",
}


def defence_table(report: dict[str, Any]) -> list[str]:
    """Poisoning defences side by side: each FedDM row's drop without and with the robust
    filter (and its FRR), then FedAvg's drop per attack under plain averaging and each robust
    aggregator. Empty where no defended cell ran."""
    feddm, fedavg = [], None
    for row in report["rows"]:
        name = row["name"]
        po = cell_summary(report, name, "poisoning")
        pd = cell_summary(report, name, "poisoning_defended")
        if pd and "accuracy_drops" in pd:
            fedavg = pd
        elif po and pd:
            feddm.append((name, po, pd))
    if not feddm and fedavg is None:
        return []
    attack = (report.get("config", {}).get("poisoning") or {}).get("attack", "?")
    lines = [
        "| federation | attack | no defence: drop (pts) | defence | with defence: drop (pts) |",
        "|---|---|---|---|---|",
    ]
    for name, po, pd in feddm:
        lines.append(
            f"| FedDM `{name}` | {attack} | {_pct(po['accuracy_drop'])} | robust filter "
            f"(FRR {_fmt(pd['false_rejection_rate'], 2)}) | {_pct(pd['accuracy_drop'])} |"
        )
    if fedavg is not None:
        for att, drops in fedavg["accuracy_drops"].items():
            robust = [a for a in drops if a != "fedavg"]
            lines.append(
                f"| FedAvg | {FEDAVG_ATTACK_TEXT.get(att, att)} | {_pct(drops.get('fedavg'))} | "
                + ", ".join(robust)
                + " | "
                + " · ".join(f"{AGGREGATOR_SHORT.get(a, a)} {_pct(drops[a])}" for a in robust)
                + " |"
            )
    return lines


def doorping_text(report: dict[str, Any], bd: dict[str, Any]) -> str:
    """The DOORPING rows: their loop, trigger updates and the two controls' ASR."""
    parts = []
    for row in report["rows"]:
        c = cell_summary(report, row["name"], "backdoor")
        if not c or not str(c.get("kind", "")).startswith("doorping"):
            continue
        ctrl = [
            f"{label} {_pm(c[key], c.get(key + '_std'))}"
            for label, key in (("random trigger", "random_trigger_asr"), ("NAIVE", "naive_asr"))
            if c.get(key) is not None
        ]
        parts.append(
            f"`{row['name']}` ({c['kind']}, {c.get('trigger_updates', '?')} trigger updates): "
            f"ASR {_pm(c['asr'], c.get('asr_std'))}" + (f" vs {', '.join(ctrl)}" if ctrl else "")
        )
    head = (
        '- † **DOORPING** (`kind = "doorping"`; Liu et al. NDSS\'23, `attacks/doorping.py`) on '
        "the DM and DC/DSA rows instead of NAIVE: the same p, a random 2×2 patch (1 px in) "
        "re-optimised inside the row's own loop (DC: after every inner loop against the "
        "network trained on the set; DM: before every iteration against its random network) "
        "to drive the top penultimate units to α × their activation, unclamped as in the "
        "reference; the final trigger is tested. Its controls come from the same loop at the "
        "same p: the random patch never updated and BadNets' white patch of the same geometry"
    )
    return head + (": " + "; ".join(parts) + "." if parts else ".")


def received_table(report: dict[str, Any]) -> list[str]:
    """Per factorised row and distance, the set-level attack on the decoded images beside the
    one on the set as received (tiles or bases). Empty where no row has a received view
    (ordinary sets, reports from before it)."""
    lines = []
    for row in report["rows"]:
        ms = cell_summary(report, row["name"], "mia_set")
        received = (ms or {}).get("received_distances")
        if not received:
            continue
        sizes = report["cells"][row["name"]]["mia_set"]["budget"].get("set_images") or {}
        shape = (
            f" ({sizes['stored']} stored → {sizes['decoded']} decoded / {sizes['received']} "
            "received)"
            if sizes
            else ""
        )
        for d, rec in received.items():
            dec = ms["distances"].get(d, {})
            lines.append(
                f"| `{row['name']}`{shape} | `{d}` | {tpr_text(dec, 'exposed')} | "
                f"{tpr_text(rec, 'exposed')} | {tpr_text(dec, 'all')} | {tpr_text(rec, 'all')} | "
                f"{_fmt((dec.get('all') or {}).get('auc'))} | {_fmt(rec['all']['auc'])} |"
            )
            shape = ""
    if not lines:
        return []
    return [
        "| pipeline (images per target) | distance | decoded: TPR@1%FPR exposed | received: "
        "TPR@1%FPR exposed | decoded: TPR@1%FPR all | received: TPR@1%FPR all | decoded AUC "
        "all | received AUC all |",
        "|---|---|---|---|---|---|---|---|",
        *lines,
    ]


def received_leak(ms: dict[str, Any]) -> list[str]:
    """The part of a row's leak sentence on its set as received (a factorised set's tiles or
    bases, without the decoder); nothing for an ordinary set or a report from before it."""
    best = _best_set_distance(ms, "received_distances")
    if not best:
        return []
    d = ms["received_distances"][best]
    pop = "exposed" if d.get("exposed") else "all"
    if not _sure(d[pop]):
        return [f"as received (before decoding) no better than chance ({tpr_text(d, 'all')})"]
    who = "its exposed members" if pop == "exposed" else "its members"
    return [
        f"the set as received (the stored tiles or bases, before decoding) gives away {who} "
        f"at TPR {tpr_text(d, pop)} (`{best}`)"
    ]
