"""The server's view of factorised sets (IDC, HaBa): the attack on what the server receives,
beside the one on the decoded images (digits)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from attacks.set_mia import SetMIAConfig, received_view, run_set_mia, set_attack, view_of
from attacks.targets import PipelineConfig
from fedistill.distill import distill
from fedistill.errors import ConfigError
from fedistill.factorised import decode, downsample


@pytest.fixture(autouse=True)
def _one_thread(_two_threads):
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pool(digits_train):
    """300 candidates; each target pipeline gets a random half (150 members, ~15 a class)."""
    return digits_train.subset(np.random.default_rng(0).permutation(len(digits_train))[:300])


FAST = SetMIAConfig(n_boot=200)
# 5 DM steps on the decoded images at a small image learning rate: the tiles move, a little
IDC5 = {"iterations": 5, "lr_img": 0.1, "batch_real": 16, "width": 32}
IPC, FACTOR, CLASSES = 2, 2, 10


def test_idc_mix_init_tiles_give_away_every_exposed_member_to_the_received_view(pool, tmp_path):
    """Positive control: IDC's "mix" init area-downsamples ipc·f² real images of a class into
    the tiles of its stored images; the received view compares the tiles with the candidates
    downsampled the same way and finds them."""
    res = run_set_mia(
        pool,
        PipelineConfig(method="idc", ipc=IPC, method_options={**IDC5, "init": "mix"}),
        FAST,
        plot=tmp_path / "roc.png",
    )
    json.dumps(res)
    assert res["members"] == 150
    assert res["exposed"] == CLASSES * IPC * FACTOR**2  # every real image put into a tile
    n_stored = CLASSES * IPC
    assert res["set_images"] == {
        "stored": n_stored,
        "decoded": n_stored * FACTOR**2,
        "received": n_stored * FACTOR**2,  # the tiles
    }
    rec = res["received"]
    assert set(rec) == set(res["attacks"]) == {"l2", "l2_shift", "embed"}
    cell = rec["l2"]["exposed"]
    assert cell["n_in"] == 80 and cell["n_out"] == 150
    assert cell["tpr_at_fpr"]["0.01"] >= 0.9  # measured 1.0
    # the decoded images are the tiles upsampled again (bilinear): far from the originals in
    # pixels, so the decoded view misses most of them (measured 0.1)
    assert res["attacks"]["l2"]["exposed"]["tpr_at_fpr"]["0.01"] < 0.5
    assert res["plot"] == str(tmp_path / "roc.png") and (tmp_path / "roc.png").stat().st_size > 5000


def test_the_received_view_is_calibrated_on_shadows_seen_the_same_way(pool):
    res = run_set_mia(
        pool,
        PipelineConfig(method="idc", ipc=IPC, method_options={**IDC5, "init": "mix"}),
        SetMIAConfig(distances=("l2", "embed"), num_shadows=2, num_targets=2, n_boot=100),
    )
    assert res["calibrated"] and res["exposed"] == 2 * CLASSES * IPC * FACTOR**2
    cell = res["received"]["l2"]["exposed"]
    assert cell["n_in"] == 160 and cell["n_out"] == 300  # the trials of two targets
    assert cell["tpr_at_fpr"]["0.01"] >= 0.9  # measured 0.99
    assert res["received"]["embed"]["exposed"]["auc"] > 0.9  # measured 0.997


def test_idc_noise_init_exposes_no_member_and_the_received_view_stays_near_chance(pool):
    """The control the received view can fail: the same pipeline from noise copies nothing."""
    res = run_set_mia(
        pool,
        PipelineConfig(method="idc", ipc=IPC, method_options={**IDC5, "init": "noise"}),
        FAST,
    )
    assert res["exposed"] == 0
    for distance, cells in res["received"].items():
        assert "exposed" not in cells
        assert cells["all"]["auc"] < 0.65, distance  # measured 0.46–0.54
        assert cells["all"]["tpr_at_fpr"]["0.01"] <= 0.1, distance


def test_haba_received_view_is_the_bases_and_an_ordinary_set_has_none(pool):
    haba = {"hallucinators": 3, "iterations": 2, "batch_real": 16, "width": 32}
    res = run_set_mia(
        pool, PipelineConfig(method="haba", ipc=1, method_options=haba), SetMIAConfig(n_boot=50)
    )
    assert res["set_images"] == {"stored": 10, "decoded": 30, "received": 10}
    assert res["received"] is not None and res["exposed"] == 10  # real-initialised bases
    assert res["received"]["l2"]["exposed"]["n_in"] == 10

    syn = distill("haba", pool.subset(np.arange(150)), 1, seed=0, **haba)
    bases, cands = received_view(syn, pool)
    assert len(bases) == len(syn.images) == 10  # the bases, not the 30 decoded images
    assert torch.equal(bases.images, syn.images) and cands is pool
    assert "decoder" not in bases.meta and not bases.extras

    res = run_set_mia(pool, PipelineConfig(method="random", ipc=2), SetMIAConfig(n_boot=50))
    assert res["received"] is None
    assert res["set_images"] == {"stored": 20, "decoded": 20, "received": None}


def test_received_view_of_a_multi_formation_set_and_the_view_argument(pool):
    data = pool.subset(np.arange(150))
    syn = distill("idc", data, 1, seed=0, iterations=0, width=32)
    tiles, cands = received_view(syn, pool)
    assert tiles.images.shape == (40, 1, 4, 4)  # 10 stored 8×8 images, 2×2 tiles of 4×4
    assert tiles.labels.tolist() == syn.labels.repeat_interleave(4).tolist()
    assert (cands.info.height, cands.info.width) == (4, 4)  # the "embed" net's geometry
    assert torch.equal(cands.images, downsample(pool.images, 2))
    assert tiles.meta["received_from"] == {"decoder": "multi-formation", "stored_images": 10}

    seen, same = view_of(syn, pool, "decoded")
    assert torch.equal(seen.images, decode(syn).images) and same is pool
    member = np.arange(300) < 150
    out = set_attack(syn, pool, member, config=SetMIAConfig(distances=("l2",)), view="received")
    assert out["view"] == "received" and out["l2"]["all"]["n_in"] == 150

    plain = distill("random", data, 2, seed=0)
    assert received_view(plain, pool) is None
    a = set_attack(plain, pool, member, config=FAST, view="received")["scores"]
    b = set_attack(plain, pool, member, config=FAST, view="decoded")["scores"]
    assert all(np.array_equal(a[k], b[k]) for k in a)  # an ordinary set: one view
    with pytest.raises(ConfigError, match="view"):
        view_of(plain, pool, "stored")


MATRIX = {
    "dataset": "digits",
    "seed": 0,
    "reference": False,
    "budget": {
        "ipc": 1,
        "model": "mlp",
        "epochs": 10,
        "lr": 0.05,
        "weight-decay": 0.0,
        "batch-size": 64,
        "dsa": False,
    },
    "methods": [
        {"method": "random"},
        {"method": "idc", "name": "idc-dm", "iterations": 0, "width": 16, "batch-real": 16},
    ],
    "attacks": {"mia": {"num-shadows": 2, "pool-size": 100, "n-boot": 100}},
}


def test_the_matrix_reports_the_received_view_of_a_factorised_row(tmp_path):
    """The `mia_set` cell of an IDC row carries the received view and report.md shows it; an
    ordinary row has none, and a report from before the view renders as it did."""
    from attacks.matrix import config_from_dict, run_matrix
    from attacks.matrix.render import matrix_table, render_markdown

    report = json.loads(json.dumps(run_matrix(config_from_dict(MATRIX), tmp_path / "r")))
    cells = report["cells"]
    idc, rnd = cells["idc-dm"]["mia_set"], cells["random"]["mia_set"]
    assert idc["status"] == "ok" and rnd["status"] == "ok"
    assert rnd["summary"]["received_distances"] is None
    rec = idc["summary"]["received_distances"]
    assert set(rec) == {"l2", "l2_shift", "embed"}
    assert rec["l2"]["exposed"]["tpr_at_fpr"]["0.01"] >= 0.9  # the mix-init tiles, unmoved
    assert idc["budget"]["set_images"] == {"stored": 10, "decoded": 40, "received": 40}

    md = (tmp_path / "r" / "report.md").read_text()
    assert "#### The set as the server receives it: factorised sets" in md
    assert "| `idc-dm` (10 stored → 40 decoded / 40 received) | `l2` |" in md
    assert "| `random` (" not in md  # an ordinary set has no received row
    row = next(line for line in md.splitlines() if line.startswith("| `idc-dm` | "))
    assert "(received 1.00" in row or "(received 0.9" in row
    assert "the set as received (the stored tiles or bases, before decoding)" in md

    for c in cells.values():  # a report written before the received view
        if c.get("mia_set", {}).get("status") == "ok":
            c["mia_set"]["summary"].pop("received_distances")
            c["mia_set"]["budget"].pop("set_images")
    old = render_markdown(report)
    assert "factorised sets" not in old and "(received" not in matrix_table(report)
    assert "as received" not in old
