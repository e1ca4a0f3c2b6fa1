"""The attack matrix's DOORPING cells: the dm and dc rows run DOORPING in their own loop beside
its controls, the other rows NAIVE; the report names which."""

from __future__ import annotations

import pytest
import torch

from attacks.matrix import config_from_dict, run_matrix
from attacks.matrix.cells import doorping_config_for
from attacks.matrix.render import render_markdown

DOC = {
    "dataset": "digits",
    "seed": 0,
    "threads": 1,
    "reference": False,
    "budget": {"ipc": 2, "model": "mlp", "epochs": 20, "lr": 0.05, "batch-size": 64},
    "methods": [
        {"method": "random"},
        {"method": "dm", "iterations": 3, "width": 16, "batch-real": 16},
        {
            "method": "dc",
            "iterations": 1,
            "outer-loop": 3,
            "inner-loop": 1,
            "width": 16,
            "batch-real": 16,
        },
    ],
    "attacks": {
        "backdoor": {"kind": "doorping", "p": 0.1, "target": 0, "doorping": {"trigger-steps": 5}}
    },
}


def test_doorping_is_set_up_like_the_row():
    dm = doorping_config_for("dm", {"iterations": 50, "width": 32, "init": "noise"}, {})
    assert (dm.loop, dm.iterations, dm.init, dm.model_kwargs) == ("dm", 50, "noise", {"width": 32})
    dc = doorping_config_for(
        "dc",
        {"iterations": 2, "outer_loop": 5, "inner_loop": 5, "batch_real": 32, "lr_net": 0.02},
        {"alpha": 5.0},
    )
    assert (dc.loop, dc.epochs, dc.loops(10), dc.batch_real) == ("dc", 2, (5, 5), 32)
    assert dc.lr_net == 0.02 and dc.alpha == 5.0 and not dc.use_dsa()
    assert doorping_config_for("dsa", {}, {}).use_dsa()
    assert dc.trigger_updates(10) == 8  # 2 iterations × (5 − 1) inner loops


@pytest.mark.slow
def test_doorping_rows_of_a_tiny_matrix(tmp_path):
    torch.set_num_threads(1)
    report = run_matrix(config_from_dict(DOC), tmp_path)
    cells = report["cells"]
    assert cells["random"]["backdoor"]["summary"]["kind"] == "naive"
    for name, loop, updates in (("dm", "dm", 3), ("dc", "dc", 2)):
        cell = cells[name]["backdoor"]
        assert cell["status"] == "ok", cell.get("reason")
        s = cell["summary"]
        assert s["kind"] == f"doorping ({loop})" and s["trigger_updates"] == updates
        for key in ("asr", "random_trigger_asr", "naive_asr", "baseline_asr"):
            assert 0.0 <= s[key] <= 1.0
        assert cell["budget"]["doorping"]["loop"] == loop
    md = render_markdown(report)
    assert "† **DOORPING**" in md and "`dc` (doorping (dc), 2 trigger updates)" in md
