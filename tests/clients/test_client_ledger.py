"""The ClientApp keeps one privacy ledger per client for the whole run (issue 11): the budget
is planned for the run's rounds, the ledger travels in the node's ``context.state``, the ε it
reports composes every round, and a round past the plan (or without the ledger) is refused."""

from __future__ import annotations

import json

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.config import get_fused_config_from_dir
from flwr.supercore.task_identity import TaskIdentity
from opacus.accountants import RDPAccountant

from clients.client_app import LEDGER_KEY, train
from server.cli import PROJECT_ROOT
from server.validate import validate_synthetic_reply

PSG = {
    "method": "psg",
    "ipc": 1,
    "eval.model": "mlp",
    "iterations": 2,
    "batch-real": 16,
    "rounds": 2,
    "method-options": "epsilon=3,width=16,outer_loop=2,batch_loop=1,inner_loop=1",
}


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1


def _context() -> Context:
    return Context(
        run_id=1,
        node_id=101,
        node_config={"partition-id": 1, "num-partitions": 2},
        state=RecordDict(),
        run_config=get_fused_config_from_dir(PROJECT_ROOT, PSG),
    )


def _message(rnd: int) -> Message:
    content = RecordDict({"config": ConfigRecord({"strategy": "feddm", "server-round": rnd})})
    return Message(content, dst_node_id=101, message_type=MessageType.TRAIN)


def test_client_ledger_composes_over_rounds_and_refuses_past_its_plan(digits_train):
    ctx = _context()
    eps = []
    for rnd in (1, 2):
        reply = train(_message(rnd), ctx)
        assert not reply.has_error(), reply.error
        valid = validate_synthetic_reply(
            reply.content, digits_train.info, max_ipc=1, max_bytes=1 << 20
        )
        priv = valid.syn.privacy
        assert priv["planned_steps"] == 2 * 2 * 2 and priv["steps"] == rnd * 2 * 2
        assert priv["noise"] == "secure" and reply.content["metrics"]["noise-secure"] == 1
        acc = RDPAccountant()  # a fresh accountant over the client's whole step history
        for _ in range(priv["steps"]):
            acc.step(noise_multiplier=priv["noise_multiplier"], sample_rate=priv["sample_rate"])
        size = priv["size"]  # + the DP count of N, drawn in round 1 only (basic composition)
        want = size["epsilon"] + acc.get_epsilon(delta=1e-5 - size["delta"])
        assert valid.metrics["epsilon"] == pytest.approx(want, rel=1e-9)
        assert reply.content["metrics"]["num-examples"] == valid.syn.meta["size_estimate"]
        eps.append(valid.metrics["epsilon"])
        state = json.loads(ctx.state[LEDGER_KEY]["json"])
        assert state["history"][0][2] == priv["steps"]
    assert eps[0] < eps[1] <= 3.0
    reply = train(_message(3), ctx)  # a third round: over the plan, an error reply
    assert reply.has_error() and "privacy budget exceeded" in reply.error.reason
    reply = train(_message(2), _context())  # round 2 without the ledger: refused
    assert reply.has_error() and "no privacy ledger" in reply.error.reason
