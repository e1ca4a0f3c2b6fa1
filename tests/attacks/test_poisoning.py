"""Poisoning a FedDM federation (in-process simulation, `random` sets, tiny budgets)."""

from __future__ import annotations

import pytest
import torch

from attacks.poisoning import (
    flip_labels,
    label_flip_tamper,
    malicious_set,
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


# ------------------------------------------------------------------ adaptive attackers


def test_partial_rotation_and_hidden_pull_images_are_what_they_say(digits_train):
    from attacks.poisoning import hide_pull_images, rotate_labels

    syn = client_distill(digits_train, "random", 10, seed=0)
    rotated = rotate_labels(syn, 4, seed=0)
    changed = (rotated.labels != syn.labels).nonzero().flatten()
    assert len(changed) == 40  # 4 classes × 10 images; the other 6 classes untouched
    moved = set(syn.labels[changed].tolist())
    assert len(moved) == 4 and set(rotated.labels[changed].tolist()) == moved
    assert torch.equal(rotate_labels(syn, 1).labels, syn.labels)
    ones = digits_train.images[digits_train.labels == 1][:10]
    hidden = hide_pull_images(syn, ones, target=7, hide=4)
    assert len(hidden) == len(syn) and (hidden.labels == 7).sum() == 10
    swapped = (hidden.images != syn.images).flatten(1).any(1)
    assert int(swapped.sum()) == 4 and (hidden.labels[swapped] == 7).all()
    check_client_set(hidden, digits_train.info, max_ipc=10)  # inside every format cap
    check_client_set(rotated, digits_train.info, max_ipc=10)


def test_the_filter_aware_attacker_picks_the_strongest_setting_the_rule_keeps(digits_train):
    from attacks.poisoning import strongest_kept

    syn = client_distill(digits_train, "random", 3, seed=0)
    seen = []

    def rule(sets):  # a toy filter: reject a mean absolute pixel above 2
        seen.append(float(sets[0].images.abs().mean()))
        bad = {k: "too bright" for k, s in sets.items() if float(s.images.abs().mean()) > 2}
        return [k for k in sets if k not in bad], bad

    def make(cid, s, level):
        return malicious_set("scale", s, digits_train.info, scale=level)

    base = float(syn.images.abs().mean())
    strength, crafted = strongest_kept(
        "scale", {0: syn}, {1: syn}, digits_train.info, filter_fn=rule, make=make
    )
    assert strength is not None and strength * base <= 2
    assert seen[0] > 2  # it tried stronger settings first, and they were rejected
    assert torch.allclose(crafted[0].images, syn.images * strength)
    never, honest = strongest_kept(
        "scale",
        {0: syn},
        {},
        digits_train.info,
        filter_fn=lambda sets: ([], {0: "no"}),
        make=make,
    )
    assert never is None and honest[0] is syn


def test_the_per_class_filter_rejects_a_partial_label_rotation(
    digits_train, digits_test, clean_accuracy
):
    kw = dict(attack="rotate", m=1, k_rotate=4, clean_accuracy=clean_accuracy, **FED)
    defended = run_poisoning(digits_train, digits_test, defended=True, **kw)
    assert defended["detection_rate"] == 1.0 and defended["strength"] == 4
    assert defended["false_rejection_rate"] == 0.0, defended["rejected"]
    assert "class(es)" in defended["rejected"]["0"]
