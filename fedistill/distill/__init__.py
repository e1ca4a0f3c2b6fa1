"""The method registry: every distillation method behind one entry point.

A method is a function of data, not of a training script::

    fn(real: LabeledImages, ipc: int, config: <its Config>, *, seed, device, progress) -> SyntheticSet

Methods register themselves with :func:`register` in their own module of this package; every
module here is imported on first use, so a new file makes a new method appear in the CLI, the
ClientApp, the attacks and the benchmarks at once.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fedistill.config import load_dataclass
from fedistill.data import LabeledImages
from fedistill.errors import ConfigError, UnknownNameError
from fedistill.synthetic import SyntheticSet

DistillFn = Callable[..., SyntheticSet]


@dataclass(frozen=True)
class Method:
    name: str
    fn: DistillFn
    config_cls: type
    summary: str

    def make_config(self, **overrides: Any) -> Any:
        """The method's config with ``overrides``; a key the method does not take is an error."""
        names = {f.name for f in dataclasses.fields(self.config_cls)}
        bad = sorted(set(overrides) - names)
        if bad:
            raise ConfigError(
                f"method '{self.name}' takes no option {', '.join(bad)} "
                f"(it takes: {', '.join(sorted(names))})"
            )
        cfg = load_dataclass(
            self.config_cls, overrides, f"method '{self.name}'", parse_strings=True
        )
        check = getattr(cfg, "validate", None)
        if check is not None:
            check()
        return cfg


_REGISTRY: dict[str, Method] = {}
_LOADED = False


def register(name: str, config_cls: type, summary: str = "") -> Callable[[DistillFn], DistillFn]:
    """Decorator: ``@register("dm", DMConfig, "distribution matching")``."""

    def deco(fn: DistillFn) -> DistillFn:
        _REGISTRY[name] = Method(name, fn, config_cls, summary or (fn.__doc__ or "").split("\n")[0])
        return fn

    return deco


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")
    _LOADED = True


def methods() -> dict[str, Method]:
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def get_method(name: str) -> Method:
    _load_all()
    if name not in _REGISTRY:
        raise UnknownNameError(
            f"unknown method '{name}'; choose one of {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name]


def distill(
    method: str,
    real: LabeledImages,
    ipc: int,
    config: Any | None = None,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    model: torch.nn.Module | None = None,
    record: dict[str, Any] | None = None,
    ledger: Any | None = None,
    **overrides: Any,
) -> SyntheticSet:
    """Distill ``real`` into ``ipc`` images per class with the named method.

    ``model`` (optional) is a trained network to distill against, e.g. the current global model
    in multi-round FedDM; only methods whose function takes a ``model`` keyword accept it.

    ``record`` (optional) is an out-parameter for the attack harness: the method writes
    ``record["exposed"]``, the sorted indices into ``real`` of the real images it copied into
    the set (``random``'s picks, the real initialisation of DM / DC / DSA / KIP; empty for a
    noise start). A method that records nothing leaves ``None`` there. The record never enters
    the returned set, so it is neither saved nor sent.

    ``ledger`` (optional) is a client's :class:`fedistill.privacy.PrivacyLedger` from its
    earlier rounds, for private methods that keep one across a run; a method without a ledger
    refuses it.
    """
    m = get_method(method)
    if not isinstance(ipc, int) or ipc < 1:
        raise ConfigError(f"ipc must be a positive integer, got {ipc!r}")
    if config is None:
        config = m.make_config(**overrides)
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    takes = inspect.signature(m.fn).parameters
    kwargs: dict[str, Any] = {}
    if model is not None:
        if "model" not in takes:
            raise ConfigError(f"method '{method}' cannot distill against a given model")
        kwargs["model"] = model
    if ledger is not None:
        if "ledger" not in takes:
            raise ConfigError(f"method '{method}' keeps no privacy ledger")
        kwargs["ledger"] = ledger
    if record is not None:
        record["exposed"] = None
        if "record" in takes:
            kwargs["record"] = record
    return m.fn(
        real, ipc, config, seed=seed, device=torch.device(device), progress=progress, **kwargs
    )
