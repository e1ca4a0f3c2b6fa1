"""The attack matrix: configuration checks, a tiny matrix end to end, and a failing cell."""

from __future__ import annotations

import json
import math
import textwrap

import pytest
import torch

from attacks import cli as audit_cli
from attacks.matrix import config_from_dict, load_config, quick, run_matrix, select
from fedistill.cli import main as fedistill_main
from fedistill.errors import ConfigError, UnknownNameError


@pytest.fixture(autouse=True)
def _one_thread(_two_threads):
    torch.set_num_threads(1)  # tiny models: a second thread only adds contention


GOOD = """
dataset = "digits"
seed = 0

[budget]
ipc = 3
model = "mlp"
epochs = 30
lr = 0.05
weight-decay = 0.0
batch-size = 64
dsa = false

[[methods]]
method = "random"

[[methods]]
method = "dm"
iterations = 3
width = 16
batch-real = 16
"""


def _write(tmp_path, text, name="audit.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _run_cli(argv, capsys):
    code = fedistill_main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ('colour = "blue"\n', "unknown top-level key 'colour'"),
        ("[attacks.mia]\nnum-shadows = 2\nshadows = 3\n", "unknown key 'shadows'"),
        ('[[methods]]\nmethod = "nosuch"\n', "unknown method 'nosuch'"),
        ('[[methods]]\nmethod = "dm"\nname = "dm2"\nnot_an_option = 1\n', "not_an_option"),
        ("[attacks.sybil]\nm = 1\n", "unknown attack 'sybil'"),
        ('[attacks.backdoor]\nkind = "sneaky"\n', "unknown kind 'sneaky'"),
        ('[attacks.mia]\nnum-shadows = "many"\n', "'num-shadows' must be int"),
        ('[attacks.mia]\nrows = ["nosuch"]\n', "rows nosuch are not rows"),
    ],
)
def test_cli_refuses_a_bad_config_with_one_line_and_exit_2(tmp_path, capsys, extra, needle):
    text = extra + GOOD if extra.startswith("colour") else GOOD + extra
    path = _write(tmp_path, text)
    code, _, err = _run_cli(["audit", "--config", str(path), "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert needle in err
    assert not (tmp_path / "o").exists()  # refused before running anything


def test_cli_refuses_missing_and_invalid_files(tmp_path, capsys):
    code, _, err = _run_cli(["audit", "--config", str(tmp_path / "absent.toml")], capsys)
    assert code == 2 and "config file not found" in err and err.count("\n") == 1
    bad = _write(tmp_path, "dataset = \n", "bad.toml")
    code, _, err = _run_cli(["audit", "--config", str(bad)], capsys)
    assert code == 2 and "invalid TOML" in err and err.count("\n") == 1
    # python -m attacks: the same contract
    assert audit_cli.main(["--config", str(tmp_path / "absent.toml")]) == 2
    assert audit_cli.main(["audit", "--config", str(bad)]) == 2
    assert audit_cli.main(["--config", str(bad), "--bogus"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 3 and all(line.startswith("error: ") for line in err.splitlines())


def test_unknown_names_on_the_command_line_are_refused(tmp_path, capsys):
    path = _write(tmp_path, GOOD)
    code, _, err = _run_cli(["audit", "--config", str(path), "--methods", "kip"], capsys)
    assert code == 2 and "unknown method(s) kip" in err and "random, dm" in err
    code, _, err = _run_cli(["audit", "--config", str(path), "--attacks", "mia,sybil"], capsys)
    assert code == 2 and "unknown attack(s) sybil" in err


def test_config_rows_defaults_selection_and_quick(tmp_path):
    cfg = load_config(
        _write(
            tmp_path,
            'data-root = "data"\n'
            + GOOD
            + "[attacks.mia]\nnum-shadows = 16\npool-size = 500\n"
            + "[attacks.poisoning]\nm = 1\nn = 3\n",
        )
    )
    assert cfg.row_names() == ["real", "random", "dm", "fedavg"]
    assert cfg.data_root == str((tmp_path / "data").resolve())  # relative to the file
    dm = cfg.pipeline(cfg.rows()[2])
    assert dm.method_options == {"iterations": 3, "width": 16, "batch_real": 16}
    assert (dm.model, dm.epochs, dm.dsa, dm.ipc) == ("mlp", 30, False, 3)
    only = select(cfg, rows=["dm", "fedavg"], attacks=["mia"])
    assert only.row_names() == ["dm"]  # fedavg only exists with poisoning
    assert only.poisoning is None and only.mia is not None
    q = quick(cfg)
    assert q.quick and q.mia.num_shadows == 2 and q.mia.pool_size == 400
    assert q.methods[1].options["iterations"] == 1
    with pytest.raises(ConfigError, match="unique"):
        config_from_dict(
            {"methods": [{"method": "dm", "init": "real"}, {"method": "dm", "init": "real"}]}
        )
    with pytest.raises(ConfigError, match="top-level key; in TOML"):
        load_config(_write(tmp_path, GOOD + "seed = 3\n", "misplaced.toml"))
    with pytest.raises(UnknownNameError, match="unknown dataset"):
        config_from_dict({"dataset": "imagenet"})


# --------------------------------------------------------------------------- a tiny matrix

TINY = (
    GOOD
    + """
[attacks.mia]
num-shadows = 2
pool-size = 40

[attacks.backdoor]
kind = "naive"
p = 0.5
target = 0

[attacks.poisoning]
attack = "label_flip"
m = 1
n = 3
defended = true
filter = { epochs = 5, model = "mlp", model-kwargs = {} }
fedavg-rounds = 1
fedavg-lr = 0.05
rows = ["random", "fedavg"]

[attacks.dp-audit]
num-runs = 4
base-size = 40
canaries-per-run = 2
rows = ["real"]
"""
)


def test_a_tiny_matrix_writes_the_report(tmp_path, capsys):
    path = _write(tmp_path, TINY)
    out = tmp_path / "report"
    code, stdout, _ = _run_cli(
        ["audit", "--config", str(path), "--out", str(out), "--quiet"], capsys
    )
    assert code == 0, stdout
    assert "cells ok, 0 failed" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "complete"
    assert [r["name"] for r in report["rows"]] == ["real", "random", "dm", "fedavg"]
    cells = report["cells"]
    for name in ("real", "random", "dm", "fedavg"):
        acc = cells[name]["utility"]["summary"]["accuracy"]
        assert acc > 0.3, (name, acc)  # 10 classes: chance is 0.1
        assert 0 < cells[name]["utility"]["seconds"] <= report["seconds"]
    for name in ("real", "random", "dm"):
        mia = cells[name]["mia"]
        assert mia["status"] == "ok"
        assert mia["budget"]["num_shadows"] == 2 and mia["budget"]["pool_size"] == 40
        for attack in ("loss", "lira_online", "lira_offline", "rmia"):
            cell = mia["summary"]["populations"][attack]["all"]
            lo, hi = cell["ci95"]["auc"]
            assert lo <= cell["auc"] <= hi and hi - lo > 0  # a real interval around it
            assert cell["n_in"] == 20 and cell["fpr_resolution"] == pytest.approx(1 / 20)
            for fpr in ("0.01", "0.001"):
                lo, hi = cell["ci95"]["tpr_at_fpr"][fpr]
                assert lo <= cell["tpr_at_fpr"][fpr] <= hi
                # 20 non-members cannot resolve 1% or 0.1%: a TPR under 1/20 reads "< 0.05"
                text = cell["tpr_at_fpr_text"][fpr]
                assert text == "< 0.05" if cell["tpr_at_fpr"][fpr] < 0.05 else "[" in text
        u = mia["summary"]["utility"]
        assert u["full_data"] == cells[name]["utility"]["summary"]["accuracy"]
        assert u["attacked"] > 0.2  # the attacked pipeline's own model (20 members)
        bd = cells[name]["backdoor"]["summary"]
        assert bd["num_models"] == 3 and bd["asr_std"] is not None and bd["clean_accuracy"] > 0.3
        assert bd["baseline_asr"] is not None and bd["clean_target_rate"] is not None
    # the positive control: half the real training data stamped and relabelled plants the
    # backdoor, which the clean pipeline's models do not have
    real_bd = cells["real"]["backdoor"]["summary"]
    assert real_bd["asr"] > 0.8 > 0.3 > real_bd["baseline_asr"]
    assert cells["fedavg"]["mia"]["status"] == "skipped"
    # the server's view: `random` uploads the images it picked, so every exposed member sits at
    # distance 0 from the set (the planted leak, found); `real` releases no set
    assert cells["real"]["mia_set"]["status"] == "skipped"
    rnd = cells["random"]["mia_set"]
    assert rnd["budget"]["exposed"] > 0
    assert rnd["summary"]["distances"]["l2"]["exposed"]["tpr_at_fpr"]["0.01"] >= 0.9
    assert rnd["summary"]["memorisation_share"] == 1.0
    assert cells["real"]["poisoning"]["status"] == "skipped"
    assert cells["real"]["poisoning"]["reason"] == "not selected (attacks.poisoning.rows)"
    po = cells["random"]["poisoning"]["summary"]
    pd = cells["random"]["poisoning_defended"]["summary"]
    assert math.isfinite(po["accuracy_drop"]) and math.isfinite(pd["accuracy_drop"])
    assert 0.0 <= pd["false_rejection_rate"] <= 1.0
    assert math.isfinite(cells["fedavg"]["poisoning"]["summary"]["accuracy_drop"])
    # FedAvg's defended cell: its robust aggregators against its three attacks
    fd = cells["fedavg"]["poisoning_defended"]
    assert fd["status"] == "ok", fd.get("reason")
    drops = fd["summary"]["accuracy_drops"]
    assert set(drops) == {"label_flip", "scaled_update", "inflated_count"}
    for att in drops.values():
        assert set(att) == {"fedavg", "median", "trimmed-mean", "multikrum"}
        assert all(math.isfinite(v) for v in att.values())
    dp = cells["real"]["dp_audit"]["summary"]
    # `real` claims nothing (ε = ∞): 4 runs cannot show that, so the cell must not look like
    # evidence of privacy
    assert dp["claimed_epsilon"] is None and dp["verdict"] == "inconclusive"
    assert dp["epsilon_lb"] <= dp["ceiling"] < 3 and dp["trials"] > 0

    md = (out / "report.md").read_text()
    assert "| pipeline | ε | utility acc % | MIA on the set: TPR@1%FPR exposed |" in md
    assert "#### Membership inference: exposed members beside all members" in md
    assert "| inconclusive: " in md  # the DP-audit cell of `real`
    assert "- `random`: anyone holding the set finds the" in md
    for name in ("real", "random", "dm", "fedavg"):
        assert f"| `{name}` |" in md
    assert "#### Poisoning defences: FedDM + robust filter beside FedAvg" in md
    assert "| FedAvg | scaled update |" in md and "| FedDM `random` | label_flip |" in md
    assert "## Budgets" in md and "K = 2 shadow pipelines" in md
    assert "fedistill audit --config" in md  # the command that produced it
    for plot in (
        "roc_lira.png",
        "backdoor.png",
        "poisoning.png",
        "roc_dm.png",
        "roc_set_random.png",
        "nearest_dm.png",
    ):
        assert (out / "plots" / plot).stat().st_size > 5000, plot


def test_a_failing_cell_is_recorded_and_the_matrix_goes_on(tmp_path, monkeypatch, digits_train):
    import attacks.lira

    def broken(*args, **kwargs):
        raise RuntimeError("shadow pipeline exploded")

    monkeypatch.setattr(attacks.lira, "run_mia", broken)
    cfg = config_from_dict(
        {
            "dataset": "digits",
            "reference": False,
            "budget": {"ipc": 3, "model": "mlp", "epochs": 20, "dsa": False, "lr": 0.05},
            "methods": [{"method": "random"}],
            "attacks": {"mia": {"num-shadows": 2, "pool-size": 40}, "backdoor": {"p": 0.5}},
        }
    )
    out = tmp_path / "r"
    report = run_matrix(cfg, out)
    cells = report["cells"]["random"]
    assert cells["mia"]["status"] == "failed"
    assert "RuntimeError: shadow pipeline exploded" in cells["mia"]["reason"]
    assert "Traceback" in cells["mia"]["traceback"]
    assert cells["utility"]["status"] == "ok" and cells["backdoor"]["status"] == "ok"
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["cells"]["random"]["mia"]["status"] == "failed"
    md = (out / "report.md").read_text()
    assert "`random` · mia: **failed** — RuntimeError: shadow pipeline exploded" in md
    row = next(line for line in md.splitlines() if line.startswith("| `random` |"))
    assert row.split("|")[5].strip() == "—"  # the LiRA cell (the set-level one still ran)


def test_a_private_row_is_audited_white_box_beside_black_box(tmp_path):
    """A DP-PSG row: the black-box bound (inconclusive at 4 runs: its ceiling is far below
    any useful claim) and the white-box audit of the mechanism itself, which can speak."""
    cfg = config_from_dict(
        {
            "dataset": "digits",
            "reference": False,
            "budget": {"ipc": 1, "model": "mlp", "epochs": 10, "dsa": False, "lr": 0.05},
            "methods": [
                {
                    "method": "psg",
                    "epsilon": 2.0,
                    "iterations": 1,
                    "outer-loop": 1,
                    "batch-loop": 1,
                    "inner-loop": 1,
                    "batch-real": 16,
                    "width": 8,
                }
            ],
            "attacks": {
                "dp-audit": {"num-runs": 4, "base-size": 40, "canaries-per-run": 2},
            },
        }
    )
    report = run_matrix(cfg, tmp_path / "r")
    dp = report["cells"]["psg"]["dp_audit"]["summary"]
    assert dp["claimed_epsilon"] == pytest.approx(2.0, rel=0.05)
    assert dp["verdict"] == "inconclusive" and dp["ceiling"] < 2.0
    wb = dp["white_box"]
    assert wb["trials"] == 10_000 and wb["ceiling"] > 5  # enough trials to speak at ε = 2
    assert wb["verdict"] == "consistent" and wb["epsilon_lb"] <= wb["claimed_epsilon"]
    md = (tmp_path / "r" / "report.md").read_text()
    assert "inconclusive: " in md and "; white-box: " in md


def test_cells_of_an_earlier_run_are_kept_only_under_the_same_settings(tmp_path, capsys):
    """--keep-from reuses ok cells measured under the same settings and says so; a changed
    attack section or --rerun measures again."""
    doc = {
        "dataset": "digits",
        "reference": False,
        "budget": {"ipc": 2, "model": "mlp", "epochs": 10, "dsa": False, "lr": 0.05},
        "methods": [{"method": "random"}],
        "attacks": {"backdoor": {"p": 0.5}},
    }
    first = run_matrix(config_from_dict(doc), tmp_path / "a")
    earlier = json.loads((tmp_path / "a" / "report.json").read_text())
    again = run_matrix(config_from_dict(doc), tmp_path / "b", keep=earlier, rerun={"utility"})
    cells = again["cells"]["random"]
    assert cells["backdoor"]["kept_from"]["started"] == first["started"]
    assert cells["backdoor"]["summary"] == earlier["cells"]["random"]["backdoor"]["summary"]
    assert "kept_from" not in cells["utility"]  # --rerun utility
    md = (tmp_path / "b" / "report.md").read_text()
    assert f"Kept from the run started {first['started']}" in md and "`random` · backdoor" in md
    changed = dict(doc, attacks={"backdoor": {"p": 0.3}})
    third = run_matrix(config_from_dict(changed), tmp_path / "c", keep=earlier)
    assert "kept_from" in third["cells"]["random"]["utility"]  # the budget did not change
    assert "kept_from" not in third["cells"]["random"]["backdoor"]  # its section did
    # a report from before the reference ConvNet geometry (no "convnet_geometry") keeps nothing
    compact = dict(
        earlier, machine={k: v for k, v in earlier["machine"].items() if k != "convnet_geometry"}
    )
    fourth = run_matrix(config_from_dict(doc), tmp_path / "e", keep=compact)
    assert not any("kept_from" in c for c in fourth["cells"]["random"].values())
    # the CLI: a report that is not JSON is one line and exit 2
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    path = _write(tmp_path, GOOD)
    code, _, err = _run_cli(
        ["audit", "--config", str(path), "--out", str(tmp_path / "d"), "--keep-from", str(bad)],
        capsys,
    )
    assert code == 2 and "not a readable report" in err and len(err.strip().splitlines()) == 1


def test_how_many_jobs_ran_a_cell_does_not_change_what_it_measured():
    """--keep-from compares attack sections without their scheduling keys (``jobs``): a report
    written before the key existed, or with another job count, still provides its cells."""
    from attacks.matrix.runner import _measured

    before = {"mia": {"num_shadows": 16}}
    one, four = ({"mia": {"num_shadows": 16, "jobs": j}} for j in (1, 4))
    other = {"mia": {"num_shadows": 8, "jobs": 4}}
    assert _measured(before, "mia") == _measured(one, "mia") == _measured(four, "mia")
    assert _measured(four, "mia") != _measured(other, "mia")
    with pytest.raises(ConfigError, match="jobs must be ≥ 1"):
        config_from_dict({"dataset": "digits", "methods": [], "attacks": {"mia": {"jobs": 0}}})
