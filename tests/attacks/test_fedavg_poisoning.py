"""FedAvg against malicious clients, per robust aggregator (in-process, digits, an MLP)."""

from __future__ import annotations

import pytest

from attacks.fedavg_poisoning import run_fedavg_poisoning

FEDAVG_FAST = dict(partitioner="iid", rounds=3, local_epochs=2, lr=0.1, model="mlp")


@pytest.mark.slow
def test_robust_aggregators_hold_where_plain_fedavg_falls(digits_train, digits_test):
    out = run_fedavg_poisoning(
        digits_train,
        digits_test,
        attacks=("scaled_update", "inflated_count"),
        aggregators=("fedavg", "median", "trimmed-mean", "multikrum"),
        m=1,
        n=5,
        scale=-10.0,
        **FEDAVG_FAST,
    )
    rows = {(r["attack"], r["aggregator"]): r for r in out["rows"]}
    assert all(acc > 0.6 for acc in out["clean"].values()), out["clean"]
    # positive control: one boosted update wrecks the plain mean
    assert rows[("scaled_update", "fedavg")]["accuracy_drop"] > 0.3
    for agg in ("median", "trimmed-mean", "multikrum"):
        assert rows[("scaled_update", agg)]["accuracy_drop"] < 0.1, rows[("scaled_update", agg)]
    assert 0 not in rows[("scaled_update", "multikrum")]["aggregated_last_round"]
    # an inflated count is clipped to the median: no worse than an honest-count label flipper
    assert rows[("inflated_count", "fedavg")]["accuracy_drop"] < 0.1
    trusting = run_fedavg_poisoning(
        digits_train,
        digits_test,
        attacks=("inflated_count",),
        aggregators=("fedavg",),
        weighting="reported",
        **FEDAVG_FAST,
    )
    assert trusting["rows"][0]["accuracy_drop"] > 0.3  # positive control: the count captures it
