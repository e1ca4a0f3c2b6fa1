"""Matching replies to the nodes they answer for (server.strategies.replies_by_node)."""

from __future__ import annotations

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
