"""The wire contract between the ClientApp and the ServerApp, Flower-free.

What both apps agree on lives here, in the library, so neither app imports the other: the message
keys, the run settings (typed from the Flower run config), the data each node loads, and the
numpy form of what travels (a synthetic set, a model). Each app converts these to and from Flower
records in one place of its own (``clients/task.py``, ``server/records.py``).

Settings come from the Flower run config (``[tool.flwr.app.config]`` in pyproject.toml, with
``flwr run --run-config`` overrides); a client's partition from ``context.node_config``
(``partition-id``, ``num-partitions``). Records in a message:

* server → client: ``"config"`` (ConfigRecord: ``strategy``, ``server-round``, ...) and, from
  round 2 of FedDM and in every FedAvg round, ``"arrays"`` (the global model's state dict);
* client → server (FedDM): ``"synthetic"`` (ArrayRecord with ``x`` float32 N×C×H×W and ``y``
  int64 N or float32 N×K), ``"metrics"`` (MetricRecord: ``num-examples``, ``seconds``,
  ``bytes``, ``partition-id``, and ``epsilon``/``delta``/``rho`` where the set has them),
  ``"provenance"`` (ConfigRecord ``json``: the set's metadata);
* client → server (FedAvg): ``"arrays"`` and ``"metrics"``, as Flower's ``FedAvg`` expects.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from fedistill.config import load_dataclass, parse_options
from fedistill.data import DatasetInfo, LabeledImages, load_dataset
from fedistill.errors import ConfigError
from fedistill.evaluate import EvalConfig
from fedistill.federated import client_partitions
from fedistill.models import build_model
from fedistill.robust import AGGREGATORS  # FedAvg's rules (the server runs Flower's own)

CONFIG_KEY = "config"
ARRAYS_KEY = "arrays"
SYNTHETIC_KEY = "synthetic"
METRICS_KEY = "metrics"
PROVENANCE_KEY = "provenance"
STRATEGIES = ("feddm", "feddm-robust", "fedavg")


@dataclass
class RunSettings:
    """The app's run config, typed. Field ``x_y`` is run-config key ``x-y``."""

    dataset: str = "digits"
    data_root: str = ""
    partitioner: str = "dirichlet"
    alpha: float = 0.5
    method: str = "dm"
    ipc: int = 10
    iterations: int = 200
    batch_real: int = 64  # 0: the method's default
    method_options: str = ""  # "key=value,key=value" (values parsed as JSON where they can be)
    rounds: int = 1
    strategy: str = "feddm"
    sanitise: bool = False  # feddm-robust: also drop the images the other clients outvote
    aggregator: str = "fedavg"  # FedAvg rounds: fedavg | median | trimmed-mean | multikrum
    num_malicious: int = 0  # multikrum: the malicious clients it assumes
    baseline: str = "fedavg"  # run after the main strategy, on the same nodes; "" for none
    fedavg_rounds: int = 10
    local_epochs: int = 3
    fedavg_lr: float = 0.05
    batch_size: int = 32
    seed: int = 0
    # the global model's training on the pooled sets: run-config keys eval.epochs, eval.lr, …
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(num_models=1))
    device: str = "cpu"
    results_dir: str = "results"
    run_name: str = ""
    max_upload_mb: float = 16.0
    max_ipc: int = 0  # 0: the run's ipc
    min_nodes: int = 1
    node_wait: float = 60.0  # seconds to wait for min-nodes SuperNodes to connect
    reply_timeout: float = 3600.0
    client_threads: int = 1
    malicious: str = ""  # test hook: "PARTITION:KIND,..." (see clients.client_app)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunSettings:
        """Typed settings; keys this app does not know are an error, missing keys default."""
        return load_dataclass(
            cls, dict(run_config), "run-config", parse_strings=True, validate=True
        )

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"unknown strategy '{self.strategy}'; choose one of {', '.join(STRATEGIES)}"
            )
        if self.aggregator not in AGGREGATORS:
            raise ConfigError(
                f"unknown aggregator '{self.aggregator}'; choose one of {', '.join(AGGREGATORS)}"
            )
        if self.num_malicious < 0:
            raise ConfigError("num-malicious must be ≥ 0")
        if self.sanitise and self.strategy != "feddm-robust":
            raise ConfigError("sanitise needs strategy 'feddm-robust' (it votes with the filter)")
        if self.baseline not in ("", "none", "fedavg"):
            raise ConfigError(f"baseline must be 'fedavg' or '' (none), got '{self.baseline}'")
        for name in ("ipc", "rounds", "fedavg_rounds", "local_epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be ≥ 1")
        if self.max_upload_mb <= 0:
            raise ConfigError("max-upload-mb must be > 0")
        try:
            self.eval.validate()
        except ConfigError as exc:
            raise ConfigError(f"run-config eval: {exc}") from None

    # ------------------------------------------------------------------ derived
    @property
    def ipc_cap(self) -> int:
        return self.max_ipc or self.ipc

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def run_baseline(self) -> bool:
        return self.baseline == "fedavg" and self.strategy != "fedavg"

    def eval_config(self) -> EvalConfig:
        return copy.deepcopy(self.eval)

    def method_overrides(self) -> dict[str, Any]:
        """The method's config overrides: ``method-options``, plus ``iterations`` and
        ``batch-real`` for methods that have those fields."""
        from fedistill.distill import get_method

        method = get_method(self.method)
        items = [x.strip() for x in self.method_options.split(",") if x.strip()]
        out: dict[str, Any] = parse_options(items, "method-options")
        fields = {f.name for f in dataclasses.fields(method.config_cls)}
        if "iterations" in fields:
            out.setdefault("iterations", self.iterations)
        if "batch_real" in fields and self.batch_real > 0:
            out.setdefault("batch_real", self.batch_real)
        method.make_config(**out)  # fail early on a key the method does not take
        return out

    def to_dict(self) -> dict[str, Any]:
        """The run config as Flower keeps it: hyphenated keys, nested tables flattened."""
        out: dict[str, Any] = {}
        for key, value in dataclasses.asdict(self).items():
            if isinstance(value, dict):
                out |= {f"{key}.{k.replace('_', '-')}": v for k, v in value.items()}
            else:
                out[key.replace("_", "-")] = value
        return out


# --------------------------------------------------------------------------- data


@lru_cache(maxsize=4)
def load_split(dataset: str, data_root: str, train: bool) -> LabeledImages:
    """A dataset split, loaded once per process."""
    return load_dataset(dataset, data_root or None, train=train)


@lru_cache(maxsize=16)
def load_partition(
    dataset: str,
    data_root: str,
    partitioner: str,
    alpha: float,
    seed: int,
    num_partitions: int,
    partition_id: int,
) -> LabeledImages:
    """A client's share of the training split (the same split on every node)."""
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(f"partition-id {partition_id} is not in 0..{num_partitions - 1}")
    train = load_split(dataset, data_root, True)
    parts = client_partitions(train, num_partitions, partitioner, alpha, seed)
    return train.subset(parts[partition_id])


def settings_partition(s: RunSettings, partition_id: int, num_partitions: int) -> LabeledImages:
    return load_partition(
        s.dataset, s.data_root, s.partitioner, s.alpha, s.seed, num_partitions, partition_id
    )


# --------------------------------------------------------------------------- what travels


def model_to_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """A model's state dict as numpy arrays (the form an ArrayRecord carries)."""
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def new_model(s: RunSettings, info: DatasetInfo) -> nn.Module:
    """The global model's architecture (the server's evaluation model)."""
    return build_model(s.eval.model, info, **s.eval.model_kwargs)


def _decoded(key: str, value: Any) -> np.ndarray:
    """``value`` as a numpy array: an array already, or a transport array with ``.numpy()``
    (Flower's ``Array``) whose bytes may be malformed — any failure is one ConfigError."""
    if isinstance(value, np.ndarray):
        return value
    try:
        out = value.numpy()
    except Exception as exc:  # untrusted bytes: whatever the decoder raises
        raise ConfigError(f"model array '{key}' cannot be decoded: {exc}") from None
    if not isinstance(out, np.ndarray):
        raise ConfigError(f"model array '{key}' is not an array")
    return out


def arrays_to_model(arrays: Mapping[str, Any], s: RunSettings, info: DatasetInfo) -> nn.Module:
    """A model of the run's architecture loaded from untrusted ``arrays`` (numpy arrays, or
    transport arrays with ``.numpy()`` such as an ArrayRecord's); names, shapes, dtypes and
    finiteness are checked against a fresh model (a mismatch is a ConfigError)."""
    model = new_model(s, info)
    ref = model.state_dict()
    if set(arrays) != set(ref):
        raise ConfigError("model arrays do not match the run's model (names differ)")
    state = {}
    for key, want in ref.items():
        value = _decoded(key, arrays[key])
        if value.shape != tuple(want.shape) or value.dtype != want.numpy().dtype:
            raise ConfigError(f"model array '{key}': {value.dtype}{tuple(value.shape)} is wrong")
        if not np.isfinite(value).all():
            raise ConfigError(f"model array '{key}' is malformed or not finite")
        state[key] = torch.from_numpy(np.array(value))
    model.load_state_dict(state, strict=True)
    return model.eval()
