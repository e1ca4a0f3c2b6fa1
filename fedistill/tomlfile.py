"""Reading TOML on every supported Python: ``tomllib`` from 3.11, the ``tomli`` backport
(a dependency only below 3.11) before it. One function, one kind of error."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from fedistill.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

TOMLDecodeError = tomllib.TOMLDecodeError


def loads(text: str) -> dict[str, Any]:
    """Parse TOML text (``tomllib.loads``)."""
    return tomllib.loads(text)


def load_toml(path: str | Path) -> dict[str, Any]:
    """The document in ``path``; a missing, unreadable or invalid file is one ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
