"""FedDM and FedAvg in one process (fedistill.federated), on digits with tiny budgets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedistill.errors import ConfigError, SyntheticSetError
from fedistill.evaluate import EvalConfig
from fedistill.federated import (
    check_client_set,
    client_distill,
    client_partitions,
    client_seed,
    fedavg_aggregate,
    model_bytes,
    simulate_fedavg,
    simulate_feddm,
    train_global,
)
from fedistill.models import build_model
from fedistill.synthetic import SyntheticSet

# small and quick (2 shared CPU cores): an MLP, no augmentation, a larger learning rate
FAST = EvalConfig(model="mlp", epochs=40, num_models=1, lr=0.05, batch_size=64, dsa=False)


def test_partitions_cover_every_example_once(digits_train):
    parts = client_partitions(digits_train, 4, "dirichlet", 0.5, seed=3)
    allidx = np.concatenate(parts)
    assert len(allidx) == len(digits_train) == len(np.unique(allidx))
    again = client_partitions(digits_train, 4, "dirichlet", 0.5, seed=3)
    assert all((a == b).all() for a, b in zip(parts, again))


def test_client_seed_differs_by_client_and_round():
    seeds = {client_seed(0, c, r) for c in range(5) for r in (1, 2, 3)}
    assert len(seeds) == 15
    assert client_seed(7, 0, 1) == 7


def test_feddm_one_shot_beats_chance(digits_train, digits_test):
    res = simulate_feddm(
        digits_train, digits_test, num_clients=3, method="random", ipc=10, eval_cfg=FAST
    )
    assert res.accuracy > 0.5, res.accuracy  # chance is 0.1
    assert res.kept == [0, 1, 2] and res.rejected == {}
    assert set(res.clients) == {0, 1, 2}
    assert res.bytes_up == sum(s.nbytes() for s in res.sets.values())
    assert res.bytes_down == 0  # one-shot: nothing is sent down
    for cid, m in res.clients.items():
        assert m["num_examples"] == len(res.partitions[cid])
        assert m["num_synthetic"] <= 10 * 10 and 0 < m["seconds"] <= res.wall_seconds
    assert len(res.history) == 1 and res.to_dict()["accuracy"] == res.accuracy


def test_malicious_set_is_rejected_and_filter_is_applied(digits_train, digits_test):
    seen = []

    def data_tamper(cid, part):
        seen.append(cid)
        return part

    def set_tamper(cid, syn):
        if cid != 1:
            return syn
        # twice the allowed images per class
        return SyntheticSet(torch.cat([syn.images] * 2), torch.cat([syn.labels] * 2), syn.meta)

    def set_filter(sets):
        assert 1 not in sets  # rejected by the caps before the defence sees it
        return [k for k in sets if k != 2], {2: "filtered by the test"}

    res = simulate_feddm(
        digits_train,
        digits_test,
        num_clients=3,
        method="random",
        ipc=10,
        eval_cfg=FAST,
        data_tamper=data_tamper,
        set_tamper=set_tamper,
        set_filter=set_filter,
    )
    assert seen == [0, 1, 2]
    assert res.kept == [0]
    assert "per class" in res.rejected[1]
    assert res.rejected[2] == "filtered: filtered by the test"
    assert res.accuracy > 0.2  # still computed, from client 0's set alone


def test_all_rejected_is_an_error(digits_train, digits_test):
    with pytest.raises(ConfigError, match="every client"):
        simulate_feddm(
            digits_train,
            digits_test,
            num_clients=2,
            method="random",
            ipc=5,
            eval_cfg=FAST,
            set_filter=lambda sets: ([], {k: "no" for k in sets}),
        )


def test_feddm_multi_round_sends_the_model_down(digits_train, digits_test):
    res = simulate_feddm(
        digits_train,
        digits_test,
        num_clients=2,
        method="random",
        ipc=5,
        rounds=2,
        eval_cfg=EvalConfig(model="mlp", epochs=5, lr=0.05, dsa=False),
    )
    assert [h["round"] for h in res.history] == [1, 2]
    assert res.history[0]["bytes_down"] == 0
    assert res.history[1]["bytes_down"] == 2 * model_bytes(res.model)
    assert res.history[1]["cum_bytes_up"] == res.bytes_up


def test_check_client_set(digits_train):
    syn = client_distill(digits_train, "random", 3, seed=0)
    info = digits_train.info
    check_client_set(syn, info, max_ipc=3, max_bytes=syn.nbytes())
    with pytest.raises(SyntheticSetError, match="per class"):
        check_client_set(syn, info, max_ipc=2)
    with pytest.raises(SyntheticSetError, match="byte cap"):
        check_client_set(syn, info, max_bytes=syn.nbytes() - 1)
    other = SyntheticSet(syn.images, syn.labels, dict(syn.meta, dataset="mnist"))
    with pytest.raises(SyntheticSetError, match="dataset"):
        check_client_set(other, info)
    small = SyntheticSet(syn.images[:, :, :4, :4], syn.labels, dict(syn.meta))
    with pytest.raises(SyntheticSetError, match="images are"):
        check_client_set(small, info)


def test_client_distill_ignores_model_for_methods_without_one(digits_train):
    model = build_model("convnet", digits_train.info, width=16)
    a = client_distill(digits_train, "random", 2, seed=1, model=model)
    b = client_distill(digits_train, "random", 2, {}, seed=1)
    assert torch.equal(a.images, b.images)


def test_train_global_continues_from_init_model(digits_train):
    sets = [client_distill(digits_train, "random", 2, seed=0)]
    cfg = EvalConfig(epochs=1, dsa=False, model_kwargs={"width": 16})
    init = build_model("convnet", digits_train.info, width=16)
    before = {k: v.clone() for k, v in init.state_dict().items()}
    out = train_global(sets, digits_train.info, cfg, seed=0, init_model=init)
    assert out is not init
    assert all(torch.equal(before[k], v) for k, v in init.state_dict().items())  # copy, not moved
    assert any(not torch.equal(before[k], v) for k, v in out.state_dict().items())


def test_fedavg_aggregate_is_the_weighted_mean():
    a = {"w": torch.tensor([1.0, 2.0])}
    b = {"w": torch.tensor([3.0, 6.0])}
    out = fedavg_aggregate([a, b], [1, 3])
    assert torch.allclose(out["w"], torch.tensor([2.5, 5.0]))


def test_fedavg_learns_and_counts_bytes(digits_train, digits_test):
    res = simulate_fedavg(
        digits_train,
        digits_test,
        num_clients=3,
        rounds=3,
        local_epochs=1,
        lr=0.05,
        model="mlp",
    )
    assert len(res.history) == 3
    assert res.accuracy > 0.5, res.history  # chance is 0.1
    size = model_bytes(res.model)
    assert res.bytes_up == res.bytes_down == 3 * 3 * size
    assert res.history[-1]["cum_bytes_up"] == res.bytes_up


def test_more_eval_models_give_more_accuracies(digits_train, digits_test):
    cfg = EvalConfig(model="mlp", epochs=5, num_models=2, lr=0.05, dsa=False)
    res = simulate_feddm(
        digits_train, digits_test, num_clients=2, method="random", ipc=3, eval_cfg=cfg
    )
    assert len(res.accuracies) == 2 and res.accuracies[0] == res.accuracy


def test_the_servers_models_train_at_once_each_as_it_would_alone(digits_train):
    """eval-models > 1: the server trains its models together (fedistill.trainer.train_many);
    each ends bit for bit as the same seed trained alone, and different seeds differ."""
    from fedistill.distill import distill
    from fedistill.federated import train_global, train_global_models

    sets = [distill("random", digits_train, 2, seed=s) for s in (0, 1)]
    cfg = EvalConfig(model="convnet", model_kwargs={"width": 8}, epochs=3, dsa=True)
    together = train_global_models(sets, digits_train.info, cfg, seeds=[5, 6])
    for seed, model in zip((5, 6), together, strict=True):
        alone = train_global(sets, digits_train.info, cfg, seed=seed)
        for a, b in zip(alone.state_dict().values(), model.state_dict().values(), strict=True):
            assert torch.equal(a, b)
    first = together[0].state_dict()
    assert any(not torch.equal(first[k], v) for k, v in together[1].state_dict().items())
