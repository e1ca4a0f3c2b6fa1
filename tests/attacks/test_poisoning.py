"""Poisoning a FedDM federation (in-process simulation, `random` sets, tiny budgets)."""

from __future__ import annotations

import pytest
import torch

from attacks.poisoning import (
    flip_labels,
    label_flip_tamper,
    malicious_set,
    run_federated_backdoor,
    run_poisoning,
)
from fedistill.errors import ConfigError
from fedistill.evaluate import EvalConfig
from fedistill.federated import check_client_set, client_distill, simulate_feddm

# the global model: an MLP, small batches (a few hundred pooled images), no augmentation
CFG = EvalConfig(epochs=60, num_models=1, lr=0.05, batch_size=64, dsa=False, model="mlp")
FED = dict(n=5, method="random", ipc=10, partitioner="dirichlet", alpha=0.5, eval_cfg=CFG)


@pytest.fixture(scope="module")
def clean_accuracy(digits_train, digits_test):
    return simulate_feddm(
        digits_train,
        digits_test,
        num_clients=5,
        method="random",
        ipc=10,
        partitioner="dirichlet",
        alpha=0.5,
        eval_cfg=CFG,
    ).accuracy


def test_malicious_sets_pass_the_servers_format_checks(digits_train):
    syn = client_distill(digits_train, "random", 10, seed=0)
    pool = digits_train.images[digits_train.labels == 1][:10]
    for attack in ("set_flip", "noise", "scale", "pull"):
        bad = malicious_set(attack, syn, digits_train.info, pull_images=pool, target=7)
        check_client_set(bad, digits_train.info, max_ipc=10)  # only the filter can catch them
    flipped = malicious_set("set_flip", syn, digits_train.info)
    assert (flipped.labels != syn.labels).all()
    pulled = malicious_set("pull", syn, digits_train.info, pull_images=pool, target=7)
    assert len(pulled) == 10 and (pulled.labels == 7).all()
    assert torch.equal(pulled.images, pool)
    scaled = malicious_set("scale", syn, digits_train.info, scale=3.0)
    assert torch.allclose(scaled.images, syn.images * 3)
    with pytest.raises(ConfigError):
        malicious_set("bribe", syn, digits_train.info)


def test_label_flip_tamper_touches_only_the_malicious_clients(digits_train):
    tamper = label_flip_tamper([1])
    assert tamper(0, digits_train) is digits_train
    flipped = tamper(1, digits_train)
    assert torch.equal(flipped.labels, flip_labels(digits_train.labels, 10))
    assert (flipped.labels != digits_train.labels).all()  # K = 10 is even: no fixed point


def test_label_flipping_lowers_global_accuracy_and_the_defence_restores_it(
    digits_train, digits_test, clean_accuracy
):
    attacked = run_poisoning(
        digits_train,
        digits_test,
        attack="label_flip",
        m=2,
        defended=False,
        clean_accuracy=clean_accuracy,
        **FED,
    )
    assert clean_accuracy > 0.75
    assert attacked["accuracy_drop"] > 0.15, attacked
    assert attacked["rejected"] == {}
    defended = run_poisoning(
        digits_train,
        digits_test,
        attack="label_flip",
        m=2,
        defended=True,
        clean_accuracy=clean_accuracy,
        **FED,
    )
    assert defended["detection_rate"] == 1.0, defended["rejected"]
    assert defended["false_rejection_rate"] == 0.0, defended["rejected"]
    assert defended["accuracy"] > attacked["accuracy"] + 0.1


def test_run_poisoning_rejects_bad_arguments(digits_train, digits_test):
    with pytest.raises(ConfigError):
        run_poisoning(digits_train, digits_test, attack="bribe", m=1, defended=False, **FED)
    with pytest.raises(ConfigError):
        run_poisoning(digits_train, digits_test, attack="noise", m=6, defended=False, **FED)


@pytest.mark.slow
def test_a_pull_set_moves_the_source_class_and_the_filter_removes_it(
    digits_train, digits_test, clean_accuracy
):
    common = dict(attack="pull", m=2, source=1, target=7, clean_accuracy=clean_accuracy, **FED)
    attacked = run_poisoning(digits_train, digits_test, defended=False, **common)
    defended = run_poisoning(digits_train, digits_test, defended=True, **common)
    assert attacked["source_to_target"] > 0.3, attacked
    assert defended["detection_rate"] == 1.0 and defended["false_rejection_rate"] == 0.0
    assert defended["source_to_target"] < 0.1


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
        eval_cfg=CFG,
    )
    assert out["asr"] > out["baseline_asr"] + 0.3, out
