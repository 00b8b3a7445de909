"""Settings at a program's edge: the default broker address (``$LOOM_BROKER``), the
``[log]`` section, and reading a TOML settings file into validated pydantic sections.

Read once, at a program's edge; the library below takes plain arguments (or one
validated settings object, like ``loom.broker.BrokerSettings``).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loom.errors import ConfigError

__all__ = [
    "DEFAULT_BROKER",
    "LogSettings",
    "Section",
    "broker_address",
    "read_settings",
    "validated",
]

DEFAULT_BROKER = "tcp://127.0.0.1:7700"

M = TypeVar("M", bound=BaseModel)


def broker_address(explicit: str | None = None, fallback: str = DEFAULT_BROKER) -> str:
    """``explicit`` if given, else ``$LOOM_BROKER``, else ``fallback``."""
    return explicit or os.environ.get("LOOM_BROKER") or fallback


class Section(BaseModel):
    """A settings section: unknown keys are errors (a typo names itself), values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class LogSettings(Section):
    """``[log]``: rendering and level."""

    json_lines: bool = Field(default=False, alias="json")
    level: Literal["debug", "info", "warning", "error"] = "info"


def read_settings(path: str | Path) -> dict[str, Any]:
    """A settings file's tables, parsed (not yet validated).

    Raises:
        ConfigError: the file cannot be read or is not TOML; the message names the file.
    """
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def validated(model: type[M], data: Any, where: str | Path, prefix: str = "") -> M:
    """``data`` validated as ``model``.

    Raises:
        ConfigError: a key is unknown or a value invalid; the message names ``where``
            (the file) and the key, under ``prefix`` (its section).
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{prefix}{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigError(f"{where}: {problems}") from exc
