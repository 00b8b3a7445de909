"""Settings read from a TOML file (``configs/loom.toml``) into one pydantic model.

Read once, at a program's edge; the library below takes plain arguments.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError

from loom.config import DEFAULT_BROKER
from loom.errors import LoomError
from loom.protocol import DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_TIMEOUT

__all__ = ["BrokerSettings", "ConfigError", "LogSettings", "Settings", "load_settings"]


class ConfigError(LoomError, ValueError):
    """A configuration file is missing, not TOML, or has an invalid key or value."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BrokerSettings(_Section):
    """``[broker]``: how ``loom-broker`` binds and forwards."""

    endpoint: str = DEFAULT_BROKER
    max_payload: PositiveInt = DEFAULT_MAX_PAYLOAD
    stall_timeout: PositiveFloat = 0.5
    hwm: PositiveInt = 1000
    name: str = Field(default="loom-broker", min_length=1)
    heartbeat: PositiveFloat = 1.0
    liveness: PositiveInt = 3
    call_timeout: PositiveFloat = 30.0
    max_queue: PositiveInt = 1000
    max_attempts: PositiveInt = 3
    max_call_timeout: PositiveFloat = Field(default=DEFAULT_MAX_TIMEOUT, allow_inf_nan=False)


class LogSettings(_Section):
    """``[log]``: rendering and level."""

    json_lines: bool = Field(default=False, alias="json")
    level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(_Section):
    """The whole file."""

    broker: BrokerSettings = BrokerSettings()
    log: LogSettings = LogSettings()


def load_settings(path: str | Path) -> Settings:
    """Parse and validate a settings file.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or a key is unknown or invalid;
            the message names the file and the key.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc
