"""The ClientApp's train handler, called directly (no Flower runtime): FedDM and FedAvg
replies, multi-round model loading, and errors that become error replies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.config import get_fused_config_from_dir
from flwr.supercore.task_identity import TaskIdentity

from clients.client_app import train
from clients.task import model_to_record
from fedistill.errors import ConfigError
from fedistill.wire import RunSettings, new_model, settings_partition
from server.cli import PROJECT_ROOT
from server.validate import validate_synthetic_reply, validate_update_reply

TINY = {"method": "random", "ipc": 3, "eval.model": "mlp"}


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1


def context(pid=1, num=3, **overrides) -> Context:
    cfg = get_fused_config_from_dir(PROJECT_ROOT, {**TINY, **overrides})
    return Context(
        run_id=1,
        node_id=100 + pid,
        node_config={"partition-id": pid, "num-partitions": num},
        state=RecordDict(),
        run_config=cfg,
    )


def message(strategy="feddm", rnd=1, arrays: ArrayRecord | None = None, node=101) -> Message:
    content = RecordDict({"config": ConfigRecord({"strategy": strategy, "server-round": rnd})})
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content, dst_node_id=node, message_type=MessageType.TRAIN)


def test_feddm_reply_is_a_valid_set_of_the_partition(digits_train):
    ctx = context()
    reply = train(message(), ctx)
    assert not reply.has_error(), reply.error
    valid = validate_synthetic_reply(reply.content, digits_train.info, max_ipc=3, max_bytes=1 << 20)
    part = settings_partition(RunSettings.from_run_config(ctx.run_config), 1, 3)
    held = set(part.labels.tolist())
    assert set(valid.syn.hard_labels().tolist()) == held  # only the classes it holds
    assert valid.metrics["num_examples"] == len(part)
    assert valid.metrics["partition_id"] == 1
    assert valid.metrics["bytes"] == valid.syn.nbytes()
    assert valid.syn.meta["method"] == "random"


def test_feddm_round_two_loads_the_global_model(digits_train):
    s = RunSettings.from_run_config(context().run_config)
    record = model_to_record(new_model(s, digits_train.info))
    reply = train(message(rnd=2, arrays=record), context())
    assert not reply.has_error(), reply.error
    # DM distills against the given model (FedDM's multi-round step)
    reply = train(message(rnd=2, arrays=record), context(method="dm", iterations=2))
    assert not reply.has_error(), reply.error
    # a model of the wrong architecture is refused, as an error reply
    wrong = model_to_record(torch.nn.Linear(3, 2))
    reply = train(message(rnd=2, arrays=wrong), context())
    assert reply.has_error() and "names differ" in reply.error.reason


def test_fedavg_reply_trains_the_model(digits_train):
    s = RunSettings.from_run_config(context().run_config)
    torch.manual_seed(0)
    record = model_to_record(new_model(s, digits_train.info))
    reply = train(message("fedavg", arrays=record), context())
    assert not reply.has_error(), reply.error
    assert set(reply.content.array_records) == {"arrays"}
    assert set(reply.content.metric_records) == {"metrics"}
    valid = validate_update_reply(reply.content, record, arrays_key="arrays", max_bytes=1 << 24)
    moved = [not np.array_equal(valid.arrays[k].numpy(), record[k].numpy()) for k in record]
    assert any(moved)
    assert valid.metrics["num_examples"] > 0


def test_errors_become_error_replies():
    reply = train(message(), context(malicious="1:raise"))
    assert reply.has_error()
    assert "partition 1" in reply.error.reason and "on purpose" in reply.error.reason
    reply = train(message(), context(method="no-such-method"))
    assert reply.has_error() and "no-such-method" in reply.error.reason
    bad = context()
    bad.node_config = {"partition-id": 5, "num-partitions": 3}
    reply = train(message(), bad)
    assert reply.has_error() and "partition-id 5" in reply.error.reason


def test_malicious_hook_only_hits_its_partition():
    assert not train(message(), context(pid=0, malicious="1:raise")).has_error()


def test_run_settings_types_and_checks():
    s = RunSettings.from_run_config({"ipc": "4", "alpha": 1, "eval.dsa": "false", "seed": 2.0})
    assert (s.ipc, s.alpha, s.eval.dsa, s.seed) == (4, 1.0, False, 2)
    assert s.ipc_cap == 4 and RunSettings(max_ipc=7).ipc_cap == 7
    with pytest.raises(ConfigError, match="run-config: unknown key 'no-such-key'"):
        RunSettings.from_run_config({"no-such-key": 1})
    with pytest.raises(ConfigError, match="run-config: 'ipc' must be int, got 'ten'"):
        RunSettings.from_run_config({"ipc": "ten"})
    # the training protocol is one nested table: eval.* keys override its defaults alone
    s = RunSettings.from_run_config({"eval.epochs": "7", "eval.lr": 0.5})
    assert (s.eval.epochs, s.eval.lr, s.eval.num_models, s.eval.dsa) == (7, 0.5, 1, True)
    with pytest.raises(ConfigError, match="run-config eval: unknown key 'epoch'"):
        RunSettings.from_run_config({"eval.epoch": 7})
    with pytest.raises(ConfigError, match="must be ≥ 1"):
        RunSettings.from_run_config({"eval.epochs": 0})
    with pytest.raises(ConfigError, match="strategy"):
        RunSettings.from_run_config({"strategy": "fedsgd"})
    assert RunSettings(method="random").method_overrides() == {}  # random has no iterations
    dc = RunSettings(method="dc", iterations=7, batch_real=0, method_options="init=noise")
    assert dc.method_overrides() == {"iterations": 7, "init": "noise"}
    assert RunSettings(method="dc").method_overrides()["batch_real"] == 64
    with pytest.raises(ConfigError, match="takes no option"):
        RunSettings(method="random", method_options="lr_img=1").method_overrides()
    assert RunSettings(run_name="x").to_dict()["run-name"] == "x"
    assert RunSettings().to_dict()["eval.num-models"] == 1


def test_every_pyproject_key_is_a_setting():
    cfg = get_fused_config_from_dir(PROJECT_ROOT, {})
    s = RunSettings.from_run_config(cfg)
    # every setting a run config can hold is in pyproject (None and {} defaults cannot be)
    representable = {k for k, v in s.to_dict().items() if isinstance(v, bool | int | float | str)}
    assert representable == set(cfg)
    assert s == RunSettings()  # the dataclass defaults are the app's defaults
