"""The settings files programs read: the whole ``configs/loom.toml`` (each package's
sections, validated by that package's model) and ``loom run`` files.

Read once, at a program's edge; the library below takes plain arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    field_validator,
    model_validator,
)

from loom.broker import BrokerSettings, SecuritySettings
from loom.config import FederationSettings, LogSettings, Section, read_settings, validated
from loom.desktop import DesktopSettings
from loom.errors import ConfigError, LLMConfigError
from loom.mcp import McpSettings
from loom.tools import ToolSettings, WorkerSettings

__all__ = [
    "ChildSettings",
    "ConfigError",
    "RunSettings",
    "Settings",
    "SupervisorSettings",
    "load_run_settings",
    "load_settings",
]


class Settings(Section):
    """The whole file."""

    broker: BrokerSettings = BrokerSettings()
    security: SecuritySettings = SecuritySettings()
    log: LogSettings = LogSettings()
    worker: WorkerSettings = WorkerSettings()
    tools: dict[str, ToolSettings] = Field(default_factory=dict)
    llm: dict[str, Any] = Field(default_factory=dict)
    """``[llm.NAME]``: LLM providers by name, as ``loom.cognition.LLMSettings``."""
    mcp: McpSettings = McpSettings()
    """``[mcp.servers.NAME]``: MCP servers for ``loom mcp attach``."""
    desktop: DesktopSettings = DesktopSettings()
    """``[desktop]``: what ``loom desktop`` runs."""
    federation: FederationSettings = FederationSettings()
    """``[federation]``: how the broker joins others through NATS."""

    @field_validator("llm")
    @classmethod
    def _valid_llms(cls, tables: dict[str, Any]) -> dict[str, Any]:
        # imported here: loom.cognition is heavy, and most programs never need it
        from loom.cognition import load_llm_settings

        try:
            return load_llm_settings(tables)
        except LLMConfigError as exc:  # a ValueError pydantic would prefix: say it plainly
            raise ValueError(str(exc).removeprefix("llm.")) from None


class SupervisorSettings(Section):
    """``[supervisor]``: how ``loom run`` restarts and stops its children."""

    run_broker: bool = True
    """Start the broker of ``[broker]`` as the first child (else use one running there)."""
    max_restarts: NonNegativeInt = 5
    """A child restarted more than this many times ..."""
    within: PositiveFloat = 60.0
    """... within this many seconds is given up on, and ``loom run`` stops and fails."""
    backoff: PositiveFloat = 0.5
    """Seconds before the first restart; doubled for each restart in the window."""
    max_backoff: PositiveFloat = 30.0
    grace: PositiveFloat = 10.0
    """Seconds a child gets to exit after SIGTERM before it is killed."""
    status_every: NonNegativeFloat = 10.0
    """Seconds between status tables (0: only when something changes)."""


class ChildSettings(Section):
    """One ``[[actor]]`` or ``[[worker]]``."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    target: str = Field(min_length=1)
    """``path/to/script.py:ClassName`` or ``module:ClassName`` (an actor); a file or
    module, optionally ``:ATTR``, whose ``@tool`` functions a worker serves."""
    restart: Literal["always", "on-failure", "never"] = "always"
    """``on-failure``: not after a clean exit (code 0); ``never``: run once."""
    grace: PositiveFloat | None = None
    """Overrides ``[supervisor] grace`` for this child."""
    env: dict[str, str] = Field(default_factory=dict)
    """Extra environment variables."""


class RunSettings(Section):
    """A ``loom run`` file: the broker, the actors and workers, and the supervisor."""

    broker: BrokerSettings = BrokerSettings()
    security: SecuritySettings = SecuritySettings()
    supervisor: SupervisorSettings = SupervisorSettings()
    log: LogSettings = LogSettings()
    actors: list[ChildSettings] = Field(default_factory=list, alias="actor")
    workers: list[ChildSettings] = Field(default_factory=list, alias="worker")
    desktop: DesktopSettings | None = None
    """``[desktop]``: run ``loom desktop`` on this file too, as a child named as the
    desktop is (``desktop``)."""

    @model_validator(mode="after")
    def _unique_names(self) -> RunSettings:
        names = [child.name for child in (*self.workers, *self.actors)]
        if self.desktop is not None:
            names.append(self.desktop.name)
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"child names must be unique: {', '.join(repeated)}")
        return self


def load_settings(path: str | Path) -> Settings:
    """Parse and validate a settings file.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or a key is unknown or invalid;
            the message names the file and the key.
    """
    return validated(Settings, read_settings(path), path)


def load_run_settings(path: str | Path) -> RunSettings:
    """Parse and validate a ``loom run`` file.

    Raises:
        ConfigError: as for :func:`load_settings`.
    """
    return validated(RunSettings, read_settings(path), path)
