"""The CLI's exact forms, and its contract on bad input: one line on stderr, exit code 2."""

import json
import pickle
import subprocess
import sys

import pytest
import torch

from fedistill.cli import main
from fedistill.synthetic import SyntheticSet


def run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_distill_evaluate_show_round_trip(tmp_path, capsys):
    out = tmp_path / "r.safetensors"
    code, stdout, _ = run(
        [
            "distill",
            "--method",
            "random",
            "--dataset",
            "digits",
            "--ipc",
            "2",
            "--seed",
            "0",
            "--out",
            str(out),
            "--quiet",
        ],
        capsys,
    )
    assert code == 0 and "wrote" in stdout and out.is_file()
    syn = SyntheticSet.load(out)
    assert len(syn) == 20 and syn.meta["method"] == "random"

    code, stdout, _ = run(
        ["evaluate", str(out), "--epochs", "30", "--models", "2", "--json", "--quiet"], capsys
    )
    assert code == 0
    result = json.loads(stdout)
    assert set(result) >= {"accuracy_mean", "accuracy_std", "accuracies"}
    # two models trained (measured 0.46 and 0.35 at 30 epochs on IPC 2; chance is 0.10)
    assert len(result["accuracies"]) == 2 and min(result["accuracies"]) > 0.2
    assert result["accuracy_mean"] == pytest.approx(sum(result["accuracies"]) / 2)

    png = tmp_path / "grid.png"
    code, _, _ = run(["show", str(out), "--out", str(png)], capsys)
    assert code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["distill", "--method", "nope", "--out", "x"], "unknown method 'nope'"),
        (["distill", "--method", "random", "--ipc", "0", "--out", "x"], "positive integer"),
        (
            ["distill", "--method", "random", "--dataset", "imagenet", "--out", "x"],
            "unknown dataset",
        ),
        (["distill", "--method", "random", "--rho", "0.5", "--out", "x"], "takes no option rho"),
        (
            [
                "distill",
                "--method",
                "random",
                "--dataset",
                "mnist",
                "--data-root",
                "/nonexistent",
                "--out",
                "x",
            ],
            "not found: expected",
        ),
        (["evaluate", "/nonexistent/set.safetensors"], "not found"),
        (["evaluate", "s.safetensors", "--precision", "fp8"], "invalid choice"),
        (["evaluate", "s.safetensors", "--model", "mlp", "--geometry", "reference"], "ConvNet"),
        (["frobnicate"], "invalid choice"),
        (["distill", "--method", "random"], "required"),
    ],
)
def test_bad_input_one_line_exit_2(args, message, capsys):
    code, _, err = run(args, capsys)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_pickle_renamed_to_set_is_refused_and_not_executed(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "evil.safetensors"
    bad.write_bytes(pickle.dumps(Evil()))
    for cmd in (["evaluate", str(bad)], ["show", str(bad), "--out", str(tmp_path / "g.png")]):
        code, _, err = run(cmd, capsys)
        assert code == 2 and "pickle" in err
    assert not marker.exists()


def test_corrupt_file_exit_2(tmp_path, capsys):
    s = SyntheticSet(
        torch.zeros(2, 1, 8, 8),
        torch.tensor([0, 1]),
        {
            "dataset": "digits",
            "mean": [0.3],
            "std": [0.4],
            "method": "x",
            "ipc": 1,
            "seed": 0,
            "iterations": 0,
            "num_classes": 10,
        },
    )
    p = s.save(tmp_path / "s.safetensors")
    p.write_bytes(p.read_bytes()[:-7])
    code, _, err = run(["evaluate", str(p)], capsys)
    assert code == 2 and "truncated" in err


def test_console_entry_point_exit_code():
    proc = subprocess.run(
        [sys.executable, "-m", "fedistill", "distill", "--method", "nope", "--out", "x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr


@pytest.mark.parametrize("secure", [True, False])
def test_a_private_set_states_its_epsilon_and_a_replayable_one_says_it_is_no_guarantee(
    tmp_path, capsys, secure
):
    out = tmp_path / "p.safetensors"
    tiny = ["-o", "outer_loop=1", "-o", "batch_loop=1", "-o", "inner_loop=1", "-o", "width=8"]
    code, stdout, err = run(
        [
            "distill",
            *("--method", "psg", "--dataset", "digits", "--ipc", "1", "--iterations", "1"),
            *("--epsilon", "4", "--batch-real", "32", "--quiet", "--out", str(out)),
            *tiny,
            *([] if secure else ["-o", "secure_noise=false"]),
        ],
        capsys,
    )
    assert code == 0, err
    assert "ε = " in stdout and "δ = 1e-05" in stdout
    assert ("NOT A GUARANTEE" in stdout) is not secure
    code, stdout, _ = run(["show", str(out), "--out", str(tmp_path / "g.png")], capsys)
    assert code == 0 and "psg ipc 1" in stdout and ("NOT A GUARANTEE" in stdout) is not secure
