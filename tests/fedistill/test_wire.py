"""The wire contract: Flower-free, shared by both apps, strict about what it loads."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedistill.data import DatasetInfo
from fedistill.errors import ConfigError
from fedistill.wire import RunSettings, arrays_to_model, model_to_arrays, new_model

REPO = Path(__file__).resolve().parents[2]


def _imports(folder: str) -> set[str]:
    """Every module a package's files import (top-level names and dotted paths)."""
    out: set[str] = set()
    for path in (REPO / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                out |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                out.add(node.module)
    return out


def test_the_apps_meet_only_in_the_library_and_the_library_never_imports_flower():
    roots = {name: {m.split(".")[0] for m in _imports(name)} for name in ("fedistill", "server")}
    roots["clients"] = {m.split(".")[0] for m in _imports("clients")}
    assert "flwr" not in roots["fedistill"]
    assert not {"clients", "server", "attacks"} & roots["fedistill"]
    assert "clients" not in roots["server"] and "server" not in roots["clients"]
    # and at run time: importing the library's federated parts loads no Flower module
    code = (
        "import sys, fedistill.wire, fedistill.federated, fedistill.robust, fedistill.cli; "
        "print(any(m == 'flwr' or m.startswith('flwr.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


class _Transport:
    """A transport array whose bytes do not decode (what a hostile record can carry)."""

    def numpy(self):
        raise ValueError("buffer size must be a multiple of element size")


def test_a_model_round_trips_and_every_malformed_array_is_one_config_error(digits_train):
    s = RunSettings()
    model = new_model(s, digits_train.info)
    arrays = model_to_arrays(model)
    back = arrays_to_model(arrays, s, digits_train.info)
    assert all(np.array_equal(v, model_to_arrays(back)[k]) for k, v in arrays.items())
    key = next(iter(arrays))
    bad = {
        "names differ": {k: v for k, v in arrays.items() if k != key},
        "is wrong": arrays | {key: arrays[key][..., :1]},
        "float64": arrays | {key: arrays[key].astype(np.float64)},
        "not finite": arrays | {key: np.full_like(arrays[key], np.nan)},
        "cannot be decoded": arrays | {key: _Transport()},
    }
    for message, payload in bad.items():
        with pytest.raises(ConfigError, match=message):
            arrays_to_model(payload, s, digits_train.info)


def test_the_run_config_chooses_the_global_models_convnet_geometry():
    # Flower flattens [tool.flwr.app.config.eval.model-kwargs] into this dotted key
    mnist = DatasetInfo("mnist", 10, 1, 28, 28, (0.1307,), (0.3081,))
    default = new_model(RunSettings.from_run_config({}), mnist)
    compact = new_model(
        RunSettings.from_run_config({"eval.model-kwargs.geometry": "compact"}), mnist
    )
    assert default.map_sizes[0] == (32, 32) and compact.map_sizes[0] == (28, 28)
    assert default.classifier.in_features == 2048 and compact.classifier.in_features == 1152


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"eval.model-kwargs.geometry": "bogus"}, "unknown ConvNet geometry 'bogus'"),
        ({"eval.model-kwargs.widht": 64}, "has no option 'widht'"),
        ({"eval.model": "mlp", "eval.model-kwargs.geometry": "compact"}, "has no option"),
    ],
)
def test_a_model_option_no_model_takes_is_refused_when_the_settings_load(config, message):
    with pytest.raises(ConfigError, match=message):
        RunSettings.from_run_config(config)
