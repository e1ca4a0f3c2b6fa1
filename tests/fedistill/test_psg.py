"""DP-PSG: the private gradient, the privacy record, noise initialisation, budget, utility."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant

from fedistill.distill import distill, get_method
from fedistill.distill import psg as psg_module
from fedistill.distill.psg import poisson_sample, private_gradient
from fedistill.errors import ConfigError, PrivacyBudgetExceeded
from fedistill.evaluate import EvalConfig, evaluate_set
from fedistill.federated import set_metrics, simulate_feddm
from fedistill.models import build_model
from fedistill.privacy import ledger_of
from fedistill.synthetic import SyntheticSet

TINY = {"width": 16, "iterations": 2, "outer_loop": 2, "batch_loop": 2, "inner_loop": 2}


def _clipped_mean_by_hand(model, x, y, clip, expected_batch):
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for i in range(len(x)):
        g = torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params)
        norm = torch.cat([t.flatten() for t in g]).norm()
        factor = min(1.0, clip / (float(norm) + 1e-6))
        total = [a + factor * t for a, t in zip(total, g)]
    return [a / expected_batch for a in total]


@pytest.mark.parametrize("clip", [0.05, 100.0])  # every sample clipped / none clipped
def test_private_gradient_without_noise_is_the_clipped_mean(digits_train, clip):
    torch.manual_seed(0)
    model = build_model("convnet", digits_train.info, width=16)
    x, y = digits_train.images[:12], digits_train.labels[:12]
    want = _clipped_mean_by_hand(model, x, y, clip, expected_batch=15)
    got = private_gradient(model, x, y, clip=clip, noise_multiplier=0.0, expected_batch=15)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # the plain module is handed back without Opacus's hooks or attributes
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    # a reused GradSampleModule gives the same
    gsm = GradSampleModule(model, loss_reduction="sum")
    again = private_gradient(gsm, x, y, clip=clip, noise_multiplier=0.0, expected_batch=15)
    for a, b in zip(again, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_private_gradient_noise_has_std_sigma_c_over_batch(digits_train):
    torch.manual_seed(0)
    model = build_model("convnet", digits_train.info, width=16)
    empty = digits_train.images[:0]
    gen = torch.Generator().manual_seed(1)
    out = private_gradient(
        model,
        empty,
        digits_train.labels[:0],
        clip=0.5,
        noise_multiplier=2.0,
        expected_batch=10,
        generator=gen,
    )
    flat = torch.cat([g.flatten() for g in out])
    assert flat.numel() > 5000
    assert float(flat.std()) == pytest.approx(2.0 * 0.5 / 10, rel=0.05)
    assert abs(float(flat.mean())) < 0.005


def test_poisson_sample_draws_each_example_independently():
    gen = torch.Generator().manual_seed(0)
    sizes = [len(poisson_sample(1000, 0.1, gen)) for _ in range(200)]
    assert sum(sizes) / len(sizes) == pytest.approx(100, rel=0.05)
    assert len(set(sizes)) > 10  # the batch size varies: not a fixed-size batch


def test_recorded_epsilon_equals_a_fresh_opacus_accountant(digits_train, monkeypatch):
    calls = []
    real_fn = psg_module.private_gradient

    def counting(*args, **kwargs):
        calls.append(kwargs)  # what the mechanism was really asked for, step by step
        return real_fn(*args, **kwargs)

    monkeypatch.setattr(psg_module, "private_gradient", counting)
    syn = distill("psg", digits_train, 2, seed=0, epsilon=5.0, **TINY)
    priv = syn.privacy
    cfg = get_method("psg").make_config(epsilon=5.0, **TINY)
    assert len(calls) == priv["steps"] == cfg.steps == 2 * 2 * 2  # every evaluation counted
    size = priv["size"]  # N came from a DP count (the default), never the exact size
    assert size["source"] == "dp-count" and syn.meta["size_estimate"] == round(size["estimate"])
    assert priv["sample_rate"] == pytest.approx(256 / size["estimate"], rel=1e-12)
    assert priv["clip"] == cfg.clip and priv["delta"] == 1e-5 and priv["accountant"] == "rdp"
    # the spy: every step ran with the recorded σ (> 0 for a finite ε), C and expected batch,
    # so a loop that silently passed σ = 0 while recording σ fails here
    assert priv["noise_multiplier"] > 0
    for kw in calls:
        assert kw["noise_multiplier"] == priv["noise_multiplier"] and kw["clip"] == priv["clip"]
        assert kw["expected_batch"] == pytest.approx(priv["sample_rate"] * size["estimate"])
    acc = RDPAccountant()  # the steps: a fresh accountant, at the δ the count left
    for _ in range(priv["steps"]):
        acc.step(noise_multiplier=priv["noise_multiplier"], sample_rate=priv["sample_rate"])
    steps_eps = acc.get_epsilon(delta=priv["delta"] - size["delta"])
    assert priv["epsilon"] == pytest.approx(size["epsilon"] + steps_eps, rel=1e-9)
    assert priv["epsilon"] <= 5.0
    # the record survives the file format
    back = SyntheticSet.from_bytes(syn.to_bytes())
    assert back.privacy == priv


def test_synthetic_images_start_from_noise_never_real(digits_train):
    with pytest.raises(ConfigError, match="noise only"):
        get_method("psg").make_config(init="real")
    syn = distill("psg", digits_train, 3, seed=0, lr_img=0.0, **TINY)  # the untouched init
    real = digits_train.images.flatten(1)
    x = syn.images.flatten(1)
    assert abs(float(x.mean())) < 0.1 and float(x.std()) == pytest.approx(1.0, rel=0.1)
    nearest = torch.cdist(x, real).min(1).values
    # real images lie far closer to each other than any synthetic image lies to a real one
    real_gap = torch.cdist(real[:200], real[200:]).min(1).values.median()
    assert float(nearest.min()) > 2 * float(real_gap)
    assert syn.labels.tolist() == [c for c in range(10) for _ in range(3)]


def test_run_over_budget_stops_before_touching_data(digits_train):
    with pytest.raises(PrivacyBudgetExceeded, match="budget"):
        distill("psg", digits_train, 2, seed=0, epsilon=1.0, noise_multiplier=0.05, **TINY)
    with pytest.raises(PrivacyBudgetExceeded, match="epsilon to inf"):
        distill("psg", digits_train, 2, seed=0, noise_multiplier=0.0, **TINY)
    # the declared non-private ablation runs and says so
    syn = distill("psg", digits_train, 1, seed=0, epsilon=math.inf, noise_multiplier=0, **TINY)
    assert math.isinf(syn.privacy["epsilon"]) and syn.privacy["noise_multiplier"] == 0


def test_batchnorm_and_bad_options_are_rejected():
    make = get_method("psg").make_config
    with pytest.raises(ConfigError, match="BatchNorm"):
        make(norm="batch")
    with pytest.raises(ConfigError):
        make(accountant="moments")
    with pytest.raises(ConfigError):
        make(clip=0.0)


def test_soft_labels_are_probability_rows(digits_train):
    syn = distill("psg", digits_train, 1, seed=0, learn_labels=True, **TINY)
    assert syn.meta["label_kind"] == "soft" and syn.labels.shape == (10, 10)
    torch.testing.assert_close(syn.labels.sum(1), torch.ones(10))
    assert (syn.hard_labels() == torch.arange(10)).float().mean() >= 0.9


def test_small_images_distil_with_two_blocks():
    assert psg_module.resolve_depth(None, 8) == 2  # 8×8 digits: a third block sees 2×2 maps
    assert psg_module.resolve_depth(None, 28) == 3
    assert psg_module.resolve_depth(4, 8) == 4


@pytest.mark.slow  # 243-303 s at load 12, ~1 min quiet: the fast loop's largest cost
def test_psg_beats_chance_on_digits(digits_train, digits_test):
    syn = distill(
        "psg",
        digits_train,
        5,
        seed=0,
        epsilon=50.0,
        width=32,
        iterations=20,
        outer_loop=5,
        batch_loop=1,
        inner_loop=5,
        lr_img=3.0,
    )
    assert syn.privacy["epsilon"] <= 50.0 and syn.privacy["steps"] == 100
    assert syn.meta["hyperparameters"]["depth"] == 2  # the depth that ran is recorded
    res = evaluate_set(syn, digits_test, EvalConfig(epochs=50, num_models=1))
    assert res.mean > 0.4, res.accuracies  # chance is 0.10


# --------------------------------------------------------------------------- issue 11

SMALL = {**TINY, "batch_real": 24}  # small Poisson batches: cheap per-sample gradients


def _record(monkeypatch):
    """Record every network psg builds (its initial weights) and every private gradient."""
    nets, grads = [], []
    build, private = psg_module.build_model, psg_module.private_gradient

    def building(*args, **kwargs):
        net = build(*args, **kwargs)
        nets.append(torch.cat([p.detach().flatten().clone() for p in net.parameters()]))
        return net

    def privatising(*args, **kwargs):
        out = private(*args, **kwargs)
        grads.append(torch.cat([g.flatten() for g in out]))
        return out

    monkeypatch.setattr(psg_module, "build_model", building)
    monkeypatch.setattr(psg_module, "private_gradient", privatising)
    return nets, grads


def test_secure_noise_differs_between_runs_but_networks_are_shared(digits_train, monkeypatch):
    nets, grads = _record(monkeypatch)
    runs = [distill("psg", digits_train, 1, seed=7, epsilon=5.0, **SMALL) for _ in range(2)]
    steps = TINY["iterations"] * TINY["outer_loop"] * TINY["batch_loop"]
    assert len(nets) == 2 * TINY["iterations"] and len(grads) == 2 * steps
    for a, b in zip(nets[:2], nets[2:]):  # the seed's public randomness: same networks
        assert torch.equal(a, b)
    assert not torch.allclose(grads[0], grads[steps])  # but other noise and batches
    assert not torch.equal(runs[0].images, runs[1].images)
    # the size count is secure noise too: two runs release different estimates of N
    assert runs[0].privacy["size"]["estimate"] != runs[1].privacy["size"]["estimate"]
    for syn in runs:
        assert syn.privacy["noise"] == "secure" and syn.privacy["guarantee"] is True
        assert "noise_seed" not in json.dumps(syn.meta)  # nothing recorded reproduces it


def test_replayable_noise_is_bit_identical_and_marked(digits_train, monkeypatch):
    nets, grads = _record(monkeypatch)
    kw = {"seed": 7, "epsilon": 5.0, "secure_noise": False, **SMALL}
    a, b = (distill("psg", digits_train, 1, **kw) for _ in range(2))
    secure = distill("psg", digits_train, 1, seed=7, epsilon=5.0, **SMALL)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.privacy == b.privacy and a.meta["size_estimate"] == b.meta["size_estimate"]  # N̂ too
    steps = len(grads) // 3
    assert all(torch.equal(g, h) for g, h in zip(grads[:steps], grads[steps : 2 * steps]))
    assert torch.equal(nets[0], nets[-TINY["iterations"]])  # secure run: same networks too
    assert not torch.equal(a.images, secure.images)
    assert a.privacy["noise"] == "replayable" and a.privacy["guarantee"] is False
    assert set_metrics(a, 10, 0.0)["noise_secure"] == 0
    assert set_metrics(secure, 10, 0.0)["noise_secure"] == 1


def test_provenance_states_the_neighbouring_relation_and_what_is_public(digits_train):
    rec: dict = {}
    syn = distill("psg", digits_train, 1, seed=0, epsilon=5.0, record=rec, **SMALL)
    assert rec["exposed"] is not None and len(rec["exposed"]) == 0  # no real image copied
    priv = syn.privacy
    assert "add/remove one" in priv["neighbouring"]
    public = " | ".join(priv["public"])
    for fact in ("ipc", "class list", "image shape", "sample rate", "DP estimate"):
        assert fact in public, fact
    assert "exact size is not released" in public
    # by default the true N is not released: a DP estimate of it is, and reported as the count
    assert "source_size" not in syn.meta and priv["size"]["source"] == "dp-count"
    assert set_metrics(syn, len(digits_train), 0.0)["num_examples"] == syn.meta["size_estimate"]
    hidden = distill("psg", digits_train, 1, seed=0, epsilon=5.0, public_size=1000, **SMALL)
    assert "source_size" not in hidden.meta and hidden.meta["public_size"] == 1000
    assert "size_estimate" not in hidden.meta
    assert hidden.privacy["size"] == {"source": "declared", "public_size": 1000}
    assert hidden.privacy["sample_rate"] == pytest.approx(24 / 1000)
    assert "declared by the user" in " ".join(hidden.privacy["public"])
    assert set_metrics(hidden, len(digits_train), 0.0)["num_examples"] == 1000


def test_one_ledger_across_rounds_composes_and_refuses_past_its_plan(digits_train):
    cfg = {"epsilon": 3.0, "rounds": 2, **SMALL}
    first = distill("psg", digits_train, 1, seed=0, **cfg)
    ledger = ledger_of(first.privacy)
    m = get_method("psg")
    second = m.fn(digits_train, 1, m.make_config(**cfg), seed=1, ledger=ledger)
    p1, p2 = first.privacy, second.privacy
    assert p1["noise_multiplier"] == p2["noise_multiplier"]  # σ calibrated once, for both
    assert p1["size"] == p2["size"] and p1["sample_rate"] == p2["sample_rate"]  # one count
    assert p2["steps"] == 2 * p1["steps"] == p2["planned_steps"]
    assert p1["epsilon"] < p2["epsilon"] <= 3.0
    with pytest.raises(PrivacyBudgetExceeded, match="planned for 16 private steps, 16 are spent"):
        m.fn(digits_train, 1, m.make_config(**cfg), seed=2, ledger=ledger)
    with pytest.raises(PrivacyBudgetExceeded, match="another run"):  # not this run's ledger
        m.fn(digits_train, 1, m.make_config(**{**cfg, "epsilon": 4.0}), seed=2, ledger=ledger)


@pytest.mark.slow  # ≈ 15 s quiet, over a minute on a loaded machine
def test_feddm_three_rounds_records_the_composed_epsilon_of_each_client(digits_train, digits_test):
    fast = EvalConfig(model="mlp", epochs=2, num_models=1, lr=0.05, batch_size=64, dsa=False)
    target = 2.0
    res = simulate_feddm(
        digits_train,
        digits_test,
        num_clients=2,
        partitioner="iid",
        method="psg",
        ipc=1,
        method_config={"epsilon": target, **SMALL},
        eval_cfg=fast,
        rounds=3,
    )
    steps = TINY["iterations"] * TINY["outer_loop"] * TINY["batch_loop"]
    sigma = {cid: syn.privacy["noise_multiplier"] for cid, syn in res.sets.items()}
    for cid, syn in res.sets.items():
        q, size = syn.privacy["sample_rate"], syn.privacy["size"]
        # N is the DP count drawn in the client's first round (once per run: the q of round 3
        # reproduces every round's ε below), never the partition's exact size
        assert q == pytest.approx(24 / max(size["estimate"], 24), rel=1e-12)
        assert size["source"] == "dp-count" and "source_size" not in syn.meta
        assert res.clients[cid]["num_examples"] == syn.meta["size_estimate"]
        assert syn.privacy["planned_steps"] == 3 * steps  # σ calibrated for all 3 rounds
        previous = 0.0
        for rnd, hist in enumerate(res.history, start=1):
            acc = RDPAccountant()  # a fresh accountant over this client's whole step history
            for _ in range(rnd * steps):
                acc.step(noise_multiplier=sigma[cid], sample_rate=q)
            # + the count, composed once (basic composition, at the δ the count left)
            want = size["epsilon"] + acc.get_epsilon(delta=1e-5 - size["delta"])
            assert hist["epsilon"][str(cid)] == pytest.approx(want, rel=1e-9)
            assert previous < hist["epsilon"][str(cid)] <= target
            previous = hist["epsilon"][str(cid)]
        assert res.clients[cid]["epsilon"] == pytest.approx(previous, rel=1e-12)
        assert res.clients[cid]["private_steps"] == 3 * steps
    # a budget planned for fewer rounds than the run: the client refuses, with the reason
    with pytest.raises(ConfigError, match="privacy budget exceeded"):
        simulate_feddm(
            digits_train,
            digits_test,
            num_clients=1,
            partitioner="iid",
            method="psg",
            ipc=1,
            method_config={"epsilon": target, "rounds": 1, **SMALL},
            eval_cfg=fast,
            rounds=2,
        )
