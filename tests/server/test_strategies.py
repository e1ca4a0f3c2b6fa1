"""Matching replies to the nodes they answer for (server.strategies.replies_by_node)."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message
from flwr.supercore.task_identity import TaskIdentity

from server.strategies import replies_by_node, unreachable


def setup_module() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID


def _sent(node: int, message_id: str) -> Message:
    msg = Message(
        RecordDict({"config": ConfigRecord({"server-round": 1})}),
        dst_node_id=node,
        message_type=MessageType.TRAIN,
    )
    msg.metadata.__dict__["_message_id"] = message_id  # what the grid does when it pushes
    return msg


def test_a_superlink_error_is_credited_to_the_node_that_went_away():
    a, b = _sent(11, "m-11"), _sent(22, "m-22")
    honest = Message(RecordDict(), reply_to=a)  # the node's own reply names it as source
    lost = create_message_error_unavailable_res_message(b.metadata, "node_unavail")
    assert lost.metadata.src_node_id == SUPERLINK_NODE_ID  # so src_node_id alone would miss it

    got = replies_by_node([a, b], [honest, lost])

    assert set(got) == {11, 22}
    assert got[11] is honest and not got[11].has_error()
    assert got[22].has_error() and got[22].error.code == ErrorCode.NODE_UNAVAILABLE
    dropped = [{"node_id": 22, "reason": "client error", "error_code": int(got[22].error.code)}]
    assert unreachable(dropped) == {22}


def test_a_reply_to_an_unknown_message_falls_back_to_its_source():
    a = _sent(11, "m-11")
    stray = Message(RecordDict(), reply_to=_sent(33, "other"))
    assert set(replies_by_node([a], [stray])) == {33}


# ------------------------------------------------------------------ robust FedAvg aggregation


def _states(n: int = 7, seed: int = 0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    return [
        {"w": torch.randn(3, 4, generator=gen), "b": torch.randn(4, generator=gen)}
        for _ in range(n)
    ]


def _contents(states, weights):
    import numpy as np
    from flwr.app import Array, ArrayRecord, MetricRecord

    return [
        RecordDict(
            {
                "arrays": ArrayRecord(
                    {k: Array(v.numpy().astype(np.float32)) for k, v in s.items()}
                ),
                "metrics": MetricRecord({"num-examples": float(w)}),
            }
        )
        for s, w in zip(states, weights, strict=True)
    ]


def _flowers_own(contents, rule, *, beta, num_malicious):
    """Flower 1.42's own rules (FedAvg, FedMedian, FedTrimmedAvg, MultiKrum), the oracle."""
    import numpy as np
    from flwr.app import Array, ArrayRecord
    from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
    from flwr.serverapp.strategy.multikrum import select_multikrum
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    if rule == "fedavg":
        return aggregate_arrayrecords(contents, "num-examples")
    if rule == "multikrum":
        k = len(contents) - num_malicious
        chosen = select_multikrum(
            contents, num_malicious_nodes=num_malicious, num_nodes_to_select=k
        )
        return aggregate_arrayrecords(chosen, "num-examples")
    out = ArrayRecord()
    for name in contents[0]["arrays"]:
        layers = np.stack([c["arrays"][name].numpy() for c in contents])
        value = np.median(layers, axis=0) if rule == "median" else trim_mean(layers, beta)
        out[name] = Array(np.asarray(value).astype(layers.dtype))
    return out


@pytest.mark.parametrize("rule", ["fedavg", "median", "trimmed-mean", "multikrum"])
def test_the_servers_aggregation_is_the_librarys_and_matches_flowers_own(rule):
    """The ServerApp aggregates with the library's rules (one code path with the in-process
    FedAvg); each rule equals Flower's own on the same updates and weights."""
    import numpy as np

    from fedistill.robust import robust_aggregate
    from server.strategies import aggregate_updates

    states = _states()
    weights = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0]
    contents = _contents(states, weights)
    ours, _used = robust_aggregate(states, weights, rule, beta=0.2, num_malicious=2)
    served = aggregate_updates(
        [c["arrays"] for c in contents], weights, rule, beta=0.2, num_malicious=2
    )
    flower = _flowers_own(contents, rule, beta=0.2, num_malicious=2)
    for key in ours:
        np.testing.assert_array_equal(served[key].numpy(), ours[key].numpy())
        np.testing.assert_allclose(ours[key].numpy(), flower[key].numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", ["median", "trimmed-mean", "multikrum"])
def test_robust_aggregators_resist_one_scaled_update_where_the_mean_does_not(rule):
    from fedistill.robust import robust_aggregate

    states = _states(5)
    honest_mean, _ = robust_aggregate(states[1:], [1.0] * 4, "fedavg")
    attacked = [{k: v * 1e3 for k, v in states[0].items()}, *states[1:]]
    mean, _ = robust_aggregate(attacked, [1.0] * 5, "fedavg")
    robust, used = robust_aggregate(attacked, [1.0] * 5, rule, beta=0.2, num_malicious=1)

    def dist(a):
        return max(float((a[k] - honest_mean[k]).abs().max()) for k in a)

    assert dist(mean) > 100  # positive control: the mean is captured
    assert dist(robust) < 3  # the robust rule stays among the honest values
    if rule == "multikrum":
        assert 0 not in used
