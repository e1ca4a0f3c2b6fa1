"""HaBa: bases + hallucinators in one safetensors file, loaded without unpickling, decoded by
the library to the declared number of images; its losses fall on digits."""

from __future__ import annotations

import pickle

import pytest
import torch

from fedistill import factorised
from fedistill.distill import distill
from fedistill.distill.haba import HaBaConfig, diversity_loss, init_hallucinators
from fedistill.errors import ConfigError
from fedistill.evaluate import EvalConfig, evaluate_set
from fedistill.synthetic import SyntheticSet


@pytest.fixture(autouse=True)
def _one_thread(_two_threads):
    torch.set_num_threads(1)


def test_haba_loss_falls_and_the_file_round_trips(digits_train, tmp_path, monkeypatch):
    record: dict = {}
    syn = distill(
        "haba",
        digits_train,
        1,
        seed=0,
        iterations=30,
        batch_real=16,
        hallucinators=3,
        record=record,
    )
    loss = syn.meta["haba_loss"]
    # measured (seeds 0, 1): matching 6.25 → 2.46, 7.20 → 2.41 (ratios 0.39, 0.33)
    assert loss["match_last"] < 0.6 * loss["match_first"], loss
    assert len(record["exposed"]) == 10  # the real images the bases started from
    path = syn.save(tmp_path / "haba.safetensors")

    def refuse(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    back = SyntheticSet.load(path)
    out = factorised.decode(back)
    assert len(back) == 10 and len(out) == 30  # 10 bases × 3 hallucinators, as declared
    assert torch.equal(out.images, factorised.decode(syn).images)
    assert torch.equal(torch.bincount(out.labels), torch.full((10,), 3))
    # bytes up: the bases and the hallucinators' weights
    assert back.nbytes() == syn.images.numel() * 4 + 10 * 8 + sum(
        t.numel() * 4 for t in syn.extras.values()
    )


def test_hallucinators_start_near_the_identity():
    cfg = HaBaConfig(hallucinators=4, channels=8, init_noise=0.0)
    params = init_hallucinators(cfg, 1, torch.Generator().manual_seed(0))
    bases = torch.randn(5, 1, 8, 8)
    assert torch.allclose(
        factorised.hallucinate(bases, params), bases.repeat_interleave(4, 0), atol=1e-5
    )


def test_diversity_term_measures_how_alike_a_bases_hallucinations_are():
    net = torch.nn.Flatten()
    net.embed = net.forward  # identity embedding
    same = torch.ones(2 * 3, 4)
    assert float(diversity_loss(net, same, 3)) == pytest.approx(1.0)
    opposite = torch.tensor([[1.0, 0], [-1.0, 0]] * 2)
    assert float(diversity_loss(net, opposite, 2)) == pytest.approx(-1.0)


def test_haba_evaluates_on_its_decoded_images(digits_train, digits_test):
    syn = distill("haba", digits_train, 1, seed=0, iterations=2, batch_real=8, hallucinators=2)
    res = evaluate_set(syn, digits_test, EvalConfig(epochs=1, num_models=1, dsa=False))
    assert len(res.accuracies) == 1
    with pytest.raises(ConfigError):
        distill("haba", digits_train, 1, hallucinators=17)
