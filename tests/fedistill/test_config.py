"""The training protocol is declared once, and every config goes through one typed loader."""

import dataclasses

import pytest

from fedistill.config import TRAIN_FIELDS, TrainProtocol, load_dataclass, parse_options
from fedistill.distill import get_method
from fedistill.errors import ConfigError
from fedistill.evaluate import EvalConfig


def test_every_training_config_extends_the_one_protocol():
    from attacks.matrix.config import BudgetConfig
    from attacks.targets import PipelineConfig
    from fedistill.wire import RunSettings

    for cls in (EvalConfig, BudgetConfig, PipelineConfig):
        assert issubclass(cls, TrainProtocol)
        own = {f.name for f in dataclasses.fields(cls)} - set(TRAIN_FIELDS)
        assert not own & set(TRAIN_FIELDS)
    # the Flower app embeds it as one nested table, not flat copies of its fields
    names = {f.name for f in dataclasses.fields(RunSettings)}
    assert "eval" in names and not any(n.startswith("eval_") for n in names)
    p = PipelineConfig(epochs=7, lr=0.5, method="random")
    assert p.protocol() == TrainProtocol(epochs=7, lr=0.5)
    assert p.eval_config().epochs == 7 and p.eval_config().num_models == 1


def test_the_loader_types_nests_and_refuses_in_one_line():
    cfg = load_dataclass(EvalConfig, {"num-models": 2, "lr": 1}, "t")
    assert cfg.num_models == 2 and cfg.lr == 1.0 and isinstance(cfg.lr, float)
    with pytest.raises(ConfigError, match=r"^t: 'epochs' must be int, got '3'$"):
        load_dataclass(EvalConfig, {"epochs": "3"}, "t")  # TOML: no text for numbers
    assert load_dataclass(EvalConfig, {"epochs": "3"}, "t", parse_strings=True).epochs == 3
    with pytest.raises(ConfigError, match=r"^t: 'dsa' must be bool, got 'maybe'$"):
        load_dataclass(EvalConfig, {"dsa": "maybe"}, "t", parse_strings=True)
    with pytest.raises(ConfigError, match=r"^t: unknown key 'epoch' \(known: model, "):
        load_dataclass(EvalConfig, {"epoch": 3}, "t")
    with pytest.raises(ConfigError, match="must be ≥ 1"):
        load_dataclass(EvalConfig, {"epochs": 0}, "t", validate=True)


def test_method_options_are_typed_by_the_same_loader():
    assert parse_options(["iterations=20", "init=noise"], "--option") == {
        "iterations": 20,
        "init": "noise",
    }
    with pytest.raises(ConfigError, match="--option expects key=value items, got 'x'"):
        parse_options(["x"], "--option")
    with pytest.raises(ConfigError, match="method 'dm': 'iterations' must be int, got 'many'"):
        get_method("dm").make_config(iterations="many")
    assert get_method("dm").make_config(iterations="20").iterations == 20
