"""Issue 11: a private set does not publish its exact source size.

By default DP-PSG releases a DP count of N (a Gaussian mechanism, sensitivity 1, a stated share
of (ε, δ)), computes q from it, and composes it with the steps; with ``public_size`` the user
declares N public and no count is drawn. Neither the set, its provenance nor a federated reply
carries the exact size.
"""

from __future__ import annotations

import math

import pytest
import torch

from fedistill.distill import distill, get_method
from fedistill.distill.psg import PSGConfig, plan_ledger
from fedistill.errors import ConfigError, PrivacyBudgetExceeded
from fedistill.evaluate import EvalConfig
from fedistill.federated import set_metrics, simulate_feddm
from fedistill.privacy import (
    PrivacyLedger,
    calibrate_noise,
    count_noise,
    gaussian_delta,
    gaussian_epsilon,
    history_epsilon,
    ledger_of,
    privacy_summary,
    release_count,
    released_size,
)

SMALL = {"width": 16, "iterations": 2, "outer_loop": 2, "batch_loop": 2, "inner_loop": 2}
SMALL |= {"batch_real": 24}


def _values(obj, path=""):
    """Every (path, leaf) of a nested meta: dict values, list items, and the keys themselves."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield f"{path}/{k}", k
            yield from _values(v, f"{path}/{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _values(v, f"{path}[{i}]")
    else:
        yield path, obj


def _mentions(value, n: int) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return value == n
    return str(n) in str(value)


# the DP outputs: an estimate may equal N by chance (then it is still a DP output)
DP_OUTPUTS = {"/size_estimate", "/privacy/size/estimate"}


@pytest.mark.parametrize("secure", [True, False])
def test_default_set_never_contains_the_exact_size(digits_train, secure):
    n = len(digits_train)  # 1257: not an IPC, class count, batch or step count here
    assert n not in (1, 10, 24, 8, 16, 2)
    syn = distill("psg", digits_train, 1, seed=3, epsilon=5.0, secure_noise=secure, **SMALL)
    assert "source_size" not in syn.meta and "public_size" not in syn.meta
    leaks = [p for p, v in _values(syn.meta) if p not in DP_OUTPUTS and _mentions(v, n)]
    assert leaks == []
    assert syn.meta["size_estimate"] == round(syn.privacy["size"]["estimate"])
    if not secure:  # replayable, seed 3: N̂ − N = −23.8 (measured), so not even N̂ is N
        assert syn.meta["size_estimate"] != n
        assert syn.privacy["guarantee"] is False
    # what a federated client reports as its example count is the estimate
    assert set_metrics(syn, n, 0.0)["num_examples"] == syn.meta["size_estimate"]


def test_the_count_spends_its_stated_share_and_composes_under_the_budget(digits_train):
    syn = distill("psg", digits_train, 1, seed=0, epsilon=2.0, **SMALL)
    priv, size = syn.privacy, syn.privacy["size"]
    cfg = get_method("psg").make_config(epsilon=2.0, **SMALL)
    # σ_N from the Gaussian mechanism's exact profile, for 5 % of ε and of δ
    assert size["delta"] == pytest.approx(0.05 * 1e-5, rel=1e-12)
    assert size["epsilon"] <= 0.05 * 2.0 + 1e-9
    assert size["noise_multiplier"] == pytest.approx(count_noise(0.1, 0.05e-5), rel=1e-12)
    assert gaussian_delta(size["noise_multiplier"], size["epsilon"]) <= size["delta"] * 1.000001
    # the steps' σ is calibrated for what the count left (at the q of the estimate)
    q = priv["sample_rate"]
    left = calibrate_noise(2.0 - size["epsilon"], 1e-5 - size["delta"], q, cfg.planned_steps)
    assert priv["noise_multiplier"] == pytest.approx(left, rel=1e-12)
    # the recorded ε: the count's + a fresh accountant over the steps' history; ≤ the budget
    steps_eps = history_epsilon(priv["history"], 1e-5 - size["delta"])
    assert priv["epsilon"] == pytest.approx(size["epsilon"] + steps_eps, rel=1e-12)
    assert priv["epsilon"] <= 2.0 and "basic" in priv["composition"]
    # basic composition is conservative next to one RDP accountant over (count, steps), which
    # is not valid here since q depends on the count (measured 1.89 vs 1.99 at these settings)
    one = history_epsilon([(size["noise_multiplier"], 1.0, 1), *priv["history"]], 1e-5)
    assert one <= priv["epsilon"]
    # the plan the audits read (plan_ledger) runs the same σ at the same estimate
    plan = plan_ledger(cfg, size["estimate"])
    assert plan.noise_multiplier == priv["noise_multiplier"] and plan.sample_rate == q
    assert "N from a DP count" in privacy_summary(priv)


def test_declared_public_size_draws_no_count(digits_train, monkeypatch):
    from fedistill.distill import psg as psg_module

    counted = distill("psg", digits_train, 1, seed=0, epsilon=2.0, rounds=2, **SMALL)
    drawn = []
    monkeypatch.setattr(psg_module, "release_count", lambda *a: drawn.append(a))
    syn = distill("psg", digits_train, 1, seed=0, epsilon=2.0, public_size=1000, **SMALL)
    assert drawn == []  # no count
    priv = syn.privacy
    assert priv["size"] == {"source": "declared", "public_size": 1000}
    assert "composition" not in priv and ledger_of(priv).count is None
    assert syn.meta["public_size"] == 1000 and "source_size" not in syn.meta
    cfg = get_method("psg").make_config(epsilon=2.0, public_size=1000, **SMALL)
    # the steps get the whole budget: σ as calibrated for (ε, δ) at q = 24 / 1000
    want = calibrate_noise(2.0, 1e-5, 24 / 1000, cfg.planned_steps)
    assert priv["noise_multiplier"] == pytest.approx(want, rel=1e-12)
    assert priv["epsilon"] == pytest.approx(history_epsilon(priv["history"], 1e-5), rel=1e-12)
    assert "N declared public: 1000" in privacy_summary(priv)
    # a ledger of a counted run is not this run's
    m = get_method("psg")
    declared = m.make_config(epsilon=2.0, rounds=2, public_size=1000, **SMALL)
    with pytest.raises(PrivacyBudgetExceeded, match="size"):
        m.fn(digits_train, 1, declared, seed=1, ledger=ledger_of(counted.privacy))


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # Opacus's PRV at q = 1
def test_release_count_is_the_gaussian_mechanism():
    gen = torch.Generator().manual_seed(0)
    draws = torch.tensor([release_count(500, 0.5, 1e-6, gen).estimate for _ in range(4000)])
    sigma = count_noise(0.5, 1e-6)
    assert float(draws.mean()) == pytest.approx(500, abs=4 * sigma / math.sqrt(4000))
    assert float(draws.std()) == pytest.approx(sigma, rel=0.05)
    # the exact profile is tighter than the classic bound σ = √(2 ln(1.25/δ)) / ε (ε < 1)
    classic = math.sqrt(2 * math.log(1.25 / 1e-6)) / 0.5
    assert sigma < classic and gaussian_delta(classic, 0.5) < 1e-6
    assert gaussian_epsilon(sigma, 1e-6) == pytest.approx(0.5, rel=1e-6)
    # Opacus's PRV accountant over the one-entry history (σ_N, q = 1, 1 step) agrees, within
    # its error bound (0.01) above the exact value
    prv = history_epsilon([(sigma, 1.0, 1)], 1e-6, "prv")
    assert 0.5 - 1e-6 <= prv <= 0.5 + 0.011
    assert count_noise(math.inf, 1e-6) == 0.0 and gaussian_epsilon(0.0, 1e-6) == math.inf


def test_a_counted_ledger_round_trips_and_keeps_its_count():
    cfg = PSGConfig(epsilon=3.0, rounds=2, **SMALL)
    ledger = plan_ledger(cfg, 812.4)
    for _ in range(cfg.steps):
        ledger.spend()
    back = PrivacyLedger.from_state(ledger.state())
    assert back.count == ledger.count and back.epsilon_spent() == ledger.epsilon_spent()
    assert back.sample_rate == 24 / 812.4 and back.steps_delta == 1e-5 - ledger.count.delta
    assert ledger_of(ledger.facts().to_dict()).count == ledger.count


def test_released_size_never_falls_back_to_the_exact_size_of_a_private_set():
    assert released_size({"size_estimate": 412, "privacy": {"size": {}}}, 400) == 412
    assert released_size({"public_size": 1000}, 400) == 1000
    assert released_size({"source_size": 400}, 400) == 400  # non-private: as before
    with pytest.raises(ConfigError, match="released size"):
        released_size({"privacy": {"size": {"source": "dp-count"}}}, 400)


@pytest.mark.parametrize("public_size", [None, 300])
def test_feddm_clients_report_the_released_size_not_the_partition(
    digits_train, digits_test, public_size
):
    fast = EvalConfig(model="mlp", epochs=1, num_models=1, lr=0.05, batch_size=64, dsa=False)
    options = {"epsilon": 1.0, "secure_noise": False, **SMALL, "iterations": 1}
    if public_size:
        options["public_size"] = public_size
    res = simulate_feddm(
        digits_train,
        digits_test,
        num_clients=2,
        partitioner="iid",
        method="psg",
        ipc=1,
        method_config=options,
        eval_cfg=fast,
        rounds=1,
    )
    for cid, syn in res.sets.items():
        exact = len(res.partitions[cid])
        reported = res.clients[cid]["num_examples"]
        if public_size:
            assert reported == public_size == syn.meta["public_size"]
        else:  # replayable noise, seed 0: N̂ = 697.4, 506.9 for 629, 628 (measured)
            assert reported == syn.meta["size_estimate"] != exact
        assert "source_size" not in syn.meta
