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

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
)

from loom.errors import ConfigError

__all__ = [
    "DEFAULT_BROKER",
    "FederationSettings",
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


class FederationSettings(Section):
    """``[federation]``: how a broker joins others through NATS (``docs/federation.md``).

    The broker reads ``export`` and ``import``; its federation link (``loom federate``,
    which ``loom-broker --federate`` starts) reads the rest.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    servers: tuple[str, ...] = ()
    """NATS URLs (``nats://HOST:PORT``, ``tls://...``; user and password may sit in the
    URL). Several: the link fails over between them. None: no federation."""
    credentials: str | None = None
    """A NATS ``.creds`` file (user JWT and NKey seed): this broker's own."""
    nkey: str | None = None
    """A file holding this broker's NKey seed (``SU...``)."""
    token: str | None = None
    """A NATS authentication token."""
    subject_prefix: str = Field(default="loom", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    """The first token of every NATS subject the link uses: meshes sharing one NATS
    cluster under different prefixes never see each other."""
    export: tuple[str, ...] = ("**",)
    """Topic patterns whose local events go out to the other brokers."""
    import_: tuple[str, ...] = Field(default=("**",), alias="import")
    """Topic patterns whose remote events this broker takes in."""
    export_tools: tuple[str, ...] = ("*",)
    """Tool names (``fnmatch`` patterns) served here that other brokers may call."""
    import_tools: tuple[str, ...] = ("*",)
    """Tool names (``fnmatch`` patterns) served elsewhere that this broker lists."""
    realtime: tuple[str, ...] = ()
    """Topic patterns whose events are dropped, not kept, while NATS is unreachable."""
    backlog_messages: PositiveInt = 100_000
    """Standard events kept while NATS is unreachable (then the oldest are dropped)."""
    backlog_bytes: PositiveInt = 64 << 20
    reliable_bytes: PositiveInt = 256 << 20
    """Bytes of reliable (durable) events kept while NATS is unreachable."""
    resend_window: PositiveFloat = 2.0
    """Seconds of sent events a link sends again after a NATS failure (its own or a
    peer's); receivers drop the copies by message id."""
    announce_interval: PositiveFloat = 1.0
    """Seconds between the link's announcements of the tools it serves; a broker not
    heard for three of them is gone, and its tools with it."""
    durable: Literal["local", "jetstream"] = "local"
    """Where durable subscriptions read from: this broker's LMDB log (``local``), or a
    JetStream stream every broker's reliable events go to (``jetstream``), with a
    consumer per subscription name, so a subscriber resumes on any broker."""
    stream_replicas: int = Field(default=1, ge=1, le=5)
    """Copies JetStream keeps of the stream (up to the NATS cluster's size)."""
    stream_max_age: NonNegativeFloat = 0.0
    """Seconds the stream keeps an event (0: until ``stream_max_bytes``)."""
    stream_max_bytes: int = Field(default=-1, ge=-1)
    """Bytes the stream keeps (-1: no bound but the servers')."""

    @field_validator("export", "import_", "realtime")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            tokens = pattern.split(".")
            if (
                not pattern
                or "" in tokens
                or any(("*" in t and t not in ("*", "**")) or t.startswith("$") for t in tokens)
            ):
                raise ValueError(f"{pattern!r} is not a topic pattern outside $ topics")
        return value

    @field_validator("servers")
    @classmethod
    def _urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            scheme, sep, rest = url.partition("://")
            if not sep or scheme not in ("nats", "tls", "ws", "wss") or not rest:
                raise ValueError(f"{url!r} is not a NATS URL (nats://HOST:PORT)")
        return value


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
