"""Settings read from a TOML file (``configs/loom.toml``) into one pydantic model.

Read once, at a program's edge; the library below takes plain arguments.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from loom.config import DEFAULT_BROKER
from loom.errors import ConfigError
from loom.protocol import DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_TIMEOUT

__all__ = [
    "BrokerSettings",
    "ChildSettings",
    "ConfigError",
    "LogSettings",
    "RunSettings",
    "Settings",
    "SupervisorSettings",
    "ToolSettings",
    "WorkerSettings",
    "load_run_settings",
    "load_settings",
]


M = TypeVar("M", bound=BaseModel)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BrokerSettings(_Section):
    """``[broker]``: how ``loom-broker`` binds and forwards."""

    endpoint: str = DEFAULT_BROKER
    max_payload: PositiveInt = DEFAULT_MAX_PAYLOAD
    stall_timeout: PositiveFloat = 0.5
    hwm: PositiveInt = 1000
    queue_bytes: PositiveInt = 256 << 20
    """About how many bytes one connection's queue holds, each way, when its messages
    are as large as ``max_payload``: the high-water mark is lowered to fit."""
    name: str = Field(default="loom-broker", min_length=1)
    heartbeat: PositiveFloat = 1.0
    liveness: PositiveInt = 3
    call_timeout: PositiveFloat = 30.0
    max_queue: PositiveInt = 1000
    max_attempts: PositiveInt = 3
    max_call_timeout: PositiveFloat = Field(default=DEFAULT_MAX_TIMEOUT, allow_inf_nan=False)
    max_call_bytes: PositiveInt = 256 << 20
    """Bytes of arguments of the tool calls the broker holds at once; past it, OVERLOADED."""
    data_dir: str | None = None
    """Where the durable topics' LMDB log lives; without it, durable emits are refused."""
    durable_map_size: PositiveInt = 1 << 30
    durable_max_age: NonNegativeFloat = 0.0
    durable_max_bytes: NonNegativeInt = 0
    approval_timeout: PositiveFloat = 120.0
    """Seconds a call to a tool that needs approval waits before it is DENIED."""
    require_approval: tuple[str, ...] = ()
    """Tool name patterns (``fnmatch``) whose calls need approval, whatever workers say."""
    metrics_port: int = Field(default=0, ge=0, le=65535)
    """Serve Prometheus metrics at ``http://metrics_host:metrics_port/metrics`` (0: off)."""
    metrics_host: str = "127.0.0.1"
    dashboard_port: int = Field(default=0, ge=0, le=65535)
    """Serve the live dashboard at ``http://dashboard_host:dashboard_port/`` (0: off)."""
    dashboard_host: str = "127.0.0.1"


class LogSettings(_Section):
    """``[log]``: rendering and level."""

    json_lines: bool = Field(default=False, alias="json")
    level: Literal["debug", "info", "warning", "error"] = "info"


class WorkerSettings(_Section):
    """``[worker]``: how ``loom worker`` runs its tools."""

    jail: Path | None = None
    """Working directory of sandboxed tools whose policy names none (default: a temporary
    directory per run)."""
    sandbox_all: bool = False
    """Sandbox the tools that declare no policy too, with the default policy."""


class ToolSettings(_Section):
    """``[tools."NAME"]``: one tool's overrides, over what its code declares."""

    sandbox: dict[str, Any] | None = None
    """Sections of its sandbox policy (``net``, ``fs``, ``limits``, ``env``), key by key;
    a tool declared without a policy gets the default one with these changes."""
    approval: bool | None = None
    """Whether each call waits for an approver."""

    @model_validator(mode="after")
    def _valid_policy(self) -> ToolSettings:
        if self.sandbox is not None:
            from loom.tools.sandbox.policy import Sandbox

            Sandbox().merged(self.sandbox)  # names the bad key
        return self


class Settings(_Section):
    """The whole file."""

    broker: BrokerSettings = BrokerSettings()
    log: LogSettings = LogSettings()
    worker: WorkerSettings = WorkerSettings()
    tools: dict[str, ToolSettings] = Field(default_factory=dict)
    llm: dict[str, Any] = Field(default_factory=dict)
    """``[llm.NAME]``: LLM providers by name, as ``loom.cognition.LLMSettings``."""

    @field_validator("llm")
    @classmethod
    def _valid_llms(cls, tables: dict[str, Any]) -> dict[str, Any]:
        # imported here: loom.cognition is heavy, and most programs never need it
        from loom.cognition.config import load_llm_settings
        from loom.errors import LLMConfigError

        try:
            return load_llm_settings(tables)
        except LLMConfigError as exc:  # a ValueError pydantic would prefix: say it plainly
            raise ValueError(str(exc).removeprefix("llm.")) from None


class SupervisorSettings(_Section):
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


class ChildSettings(_Section):
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


class RunSettings(_Section):
    """A ``loom run`` file: the broker, the actors and workers, and the supervisor."""

    broker: BrokerSettings = BrokerSettings()
    supervisor: SupervisorSettings = SupervisorSettings()
    log: LogSettings = LogSettings()
    actors: list[ChildSettings] = Field(default_factory=list, alias="actor")
    workers: list[ChildSettings] = Field(default_factory=list, alias="worker")

    @model_validator(mode="after")
    def _unique_names(self) -> RunSettings:
        names = [child.name for child in (*self.workers, *self.actors)]
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
    return _load(path, Settings)


def load_run_settings(path: str | Path) -> RunSettings:
    """Parse and validate a ``loom run`` file.

    Raises:
        ConfigError: as for :func:`load_settings`.
    """
    return _load(path, RunSettings)


def _load(path: str | Path, model: type[M]) -> M:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc
