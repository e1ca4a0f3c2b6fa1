"""Backdoors planted through a one-shot FedDM federation (in-process, `random` sets)."""

from __future__ import annotations

import dataclasses

import pytest

from attacks.federated_backdoor import run_federated_backdoor
from fedistill.evaluate import EvalConfig

# the global model: an MLP, small batches (a few hundred pooled images), no augmentation
CFG = EvalConfig(epochs=60, num_models=1, lr=0.05, batch_size=64, dsa=False, model="mlp")


@pytest.mark.slow
def test_federated_naive_backdoor_by_one_client_of_five(digits_train, digits_test):
    out = run_federated_backdoor(
        digits_train,
        digits_test,
        kind="naive",
        m=1,
        n=5,
        p=1.0,
        target=0,
        method="random",
        ipc=10,
        eval_cfg=dataclasses.replace(CFG, num_models=3),
    )
    assert out["asr"] > out["baseline_asr"] + 0.3, out
    # over 3 global models (server seeds), beside the same models' clean target-class rate
    models = out["models"]
    assert models["num_models"] == 3 and models["asr_std"] >= 0
    assert models["asr"] > models["clean_target_rate"] + 0.3
    assert out["baseline_models"]["asr"] < models["asr"] - 0.3  # the clean federation's control
