"""The ServerApp's Flower records: the library's wire contract (:mod:`fedistill.wire`) as
ArrayRecords and back, in this one place."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from torch import nn

from fedistill.data import DatasetInfo
from fedistill.wire import RunSettings, arrays_to_model, model_to_arrays


def model_to_record(model: nn.Module) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in model_to_arrays(model).items()})


def record_to_model(record: ArrayRecord, s: RunSettings, info: DatasetInfo) -> nn.Module:
    """A client's (FedAvg) or the aggregated model, checked against the run's architecture."""
    return arrays_to_model(record, s, info)


def record_to_state(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """A validated update's arrays as a state dict, for the library's aggregation rules."""
    return {k: torch.from_numpy(np.array(record[k].numpy())) for k in record}


def state_to_record(state: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in state.items()})
