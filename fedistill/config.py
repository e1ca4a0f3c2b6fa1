"""The training protocol, and the one typed loader every config goes through.

``TrainProtocol`` is how a model is trained on a set — the evaluation protocol of the
distillation literature (model, epochs, SGD's lr / momentum / weight decay, batch, DSA). It is
declared once here and embedded where it is used: :class:`fedistill.evaluate.EvalConfig`, the
attack matrix's budget and its target pipelines extend it; the Flower app's flat run-config keys
(``eval-*``) build one.

``load_dataclass`` turns a mapping (a TOML table, a Flower run config, CLI ``key=value`` options)
into a config dataclass: hyphenated keys accepted, unknown keys and wrong types refused with one
line naming the place, the key and what it must be.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from fedistill.errors import ConfigError
from fedistill.models import check_model_options


@dataclass
class TrainProtocol:
    """How a model is trained on a (synthetic or real) set: ``epochs`` of SGD with momentum,
    the learning rate ÷10 at half the epochs (the reference's schedule), optional
    differentiable Siamese augmentation (``dsa``) with the dataset's default strategy or
    ``dsa_strategy``."""

    model: str = "convnet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 300
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    dsa: bool = True
    dsa_strategy: str | None = None  # None: the dataset's default (no flips for digits)

    def validate_protocol(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be ≥ 1")
        if not self.lr > 0 or not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise ConfigError("lr must be > 0, momentum in [0, 1) and weight_decay ≥ 0")
        check_model_options(self.model, self.model_kwargs)

    def protocol(self) -> TrainProtocol:
        """The protocol part of this config (of a subclass too), as a fresh ``TrainProtocol``."""
        return TrainProtocol(**{k: copy.deepcopy(getattr(self, k)) for k in TRAIN_FIELDS})


TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainProtocol))


# --------------------------------------------------------------------------- the typed loader


def load_dataclass(
    cls: type, table: Any, where: str, *, parse_strings: bool = False, validate: bool = False
) -> Any:
    """``cls(**table)`` with hyphenated keys accepted and unknown keys or wrong types refused.

    ``parse_strings``: values may arrive as text or loosely typed (a Flower run config, CLI
    options): ``"3"`` is accepted for an int, ``"true"`` for a bool, a whole float for an int.
    Without it (TOML) the value must already have the field's type (an int is a float).
    ``validate``: call the instance's ``validate()``.
    """
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table, got {type(table).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for raw, value in _nest(table).items():
        key = str(raw).replace("-", "_")
        if key not in fields:
            known = ", ".join(n.replace("_", "-") for n in fields)
            raise ConfigError(f"{where}: unknown key '{raw}' (known: {known})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            # a nested table (``eval.epochs = 3`` in a flat run config) overrides the default
            base = _default(fields[key])
            value = _nest(value)
            part = load_dataclass(type(base), value, f"{where} {raw}", parse_strings=parse_strings)
            given = {k.replace("-", "_") for k in value}
            kwargs[key] = dataclasses.replace(base, **{k: getattr(part, k) for k in given})
        else:
            kwargs[key] = _typed(value, hint, f"{where}: '{raw}'", parse_strings)
    obj = cls(**kwargs)
    if validate:
        obj.validate()
    return obj


def _nest(table: dict[str, Any]) -> dict[str, Any]:
    """``{"eval.epochs": 3}`` → ``{"eval": {"epochs": 3}}`` (Flower flattens nested tables of a
    run config into dotted keys)."""
    out: dict[str, Any] = {}
    for raw, value in table.items():
        head, dot, rest = str(raw).partition(".")
        if dot:
            inner = out.setdefault(head, {})
            if not isinstance(inner, dict):
                raise ConfigError(f"'{head}' is both a value and a table")
            inner[rest] = value
        elif isinstance(out.get(head), dict) and isinstance(value, dict):
            out[head].update(value)
        else:
            out[head] = value
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return copy.deepcopy(f.default)


def parse_options(items: list[str] | tuple[str, ...], flag: str) -> dict[str, Any]:
    """``["iterations=20", "init=noise"]`` → ``{"iterations": 20, "init": "noise"}``: values
    are JSON where they parse as JSON, text otherwise; ``flag`` names the option in errors."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects key=value items, got '{item}'")
        try:
            out[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip().replace("-", "_")] = value.strip()
    return out


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _typed(value: Any, hint: Any, what: str, loose: bool) -> Any:
    if loose:
        value = _loosen(value, hint)
    if not _type_ok(value, hint):
        raise ConfigError(f"{what} must be {_type_name(hint)}, got {value!r}")
    if hint is float and isinstance(value, int):
        return float(value)
    return value


def _loosen(value: Any, hint: Any) -> Any:
    """Best-effort conversion of loosely typed input; anything it cannot convert is returned
    unchanged, for the type check to refuse."""
    if isinstance(value, bool):
        return value
    if hint is bool and isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    if hint is bool and isinstance(value, int) and value in (0, 1):
        return bool(value)
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                return value
    if hint is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if hint is str and isinstance(value, int | float):
        return str(value)
    return value


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        (inner,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_type_ok(v, inner) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    return True


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")
