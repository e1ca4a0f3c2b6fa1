"""Staging the Flower app for a real ``flwr run``: the one helper the deployment tests and the
federated benchmark share.

``flwr run`` rewrites a pyproject.toml that still has ``[tool.flwr.federations]`` (migration to
``$FLWR_HOME/config.toml``), so the copy drops that table and the checkout is never touched.
The copy is also what the FAB is built from: no results, data or tests travel to the nodes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedistill.tomlfile import load_toml

APP_PACKAGES = ("fedistill", "clients", "server")


def stage_app(repo: str | Path, dest: str | Path) -> Path:
    """Copy the Flower app (pyproject.toml and the Python packages) from ``repo`` to ``dest``."""
    import tomli_w  # a dependency of flwr

    repo, dest = Path(repo), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    config = load_toml(repo / "pyproject.toml")
    config.get("tool", {}).get("flwr", {}).pop("federations", None)
    (dest / "pyproject.toml").write_text(tomli_w.dumps(config))
    for package in APP_PACKAGES:
        if (repo / package).is_dir():
            shutil.copytree(
                repo / package,
                dest / package,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                dirs_exist_ok=True,
            )
    return dest


def toml_value(value: Any) -> str:
    """A Python value written as a TOML value for ``flwr run --run-config``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def run_config_arg(run_config: Mapping[str, Any]) -> str:
    """The value of one ``flwr run --run-config`` flag setting every key of ``run_config``.

    One flag for all keys: Flower parses each ``--run-config`` as its own TOML document and
    merges them by top-level table, so ``eval.num-models`` in a second flag drops an
    ``eval.epochs`` given in the first."""
    return " ".join(f"{key}={toml_value(value)}" for key, value in run_config.items())
