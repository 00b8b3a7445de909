"""What the broker's DIRECTORY answer holds, as pydantic models (checked when read)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

__all__ = ["ActorInfo", "Directory", "ToolInfo", "WorkerInfo"]


class ActorInfo(BaseModel):
    """A live actor (or client) the broker knows."""

    name: str
    role: str
    identity: str = "anonymous"
    """The identity its connection authenticated as."""
    pid: int | None = None
    patterns: list[str] = Field(default_factory=list)
    durable: dict[str, list[str]] = Field(default_factory=dict)
    """Its durable subscriptions, by name, with their patterns."""
    since: float
    last_seen: float


class WorkerInfo(BaseModel):
    """A live worker: its tools and the calls it runs now."""

    name: str
    pid: int | None = None
    tools: list[str]
    in_flight: int
    draining: bool
    since: float
    last_seen: float


class ToolInfo(BaseModel):
    """A tool some worker announced, with its schema and counters."""

    name: str
    description: str = ""
    schema_: dict[str, Any] = Field(alias="schema")
    returns: dict[str, Any] | None = None
    timeout: float | None = None
    idempotent: bool = False
    approval: bool = False
    """Calls wait for an approver's yes (``loom approve``)."""
    sandbox: dict[str, str] | None = None
    """The layers confining the tool's calls, as its worker reported them."""
    annotations: dict[str, Any] | None = None
    """Hints about the tool (MCP's ``title``, ``readOnlyHint``...), as announced."""
    workers: list[str]
    brokers: list[str] = Field(default_factory=list)
    """Other brokers serving the tool through the federation (their calls cross NATS)."""
    capacity: int
    in_flight: int
    queued: int
    calls: int
    errors: int


class Directory(BaseModel):
    """What the broker knows of the mesh at one moment."""

    actors: list[ActorInfo]
    clients: list[ActorInfo] = Field(default_factory=list)
    """Peers that said HELLO but are not actors (``loom call``, scripts)."""
    workers: list[WorkerInfo]
    tools: list[ToolInfo]
    insecure: bool = False
    """The broker runs ``--insecure``: no CURVE, no identities, no rights."""

    def actor(self, name: str) -> ActorInfo | None:
        """The live actor called ``name``, if any."""
        return next((a for a in self.actors if a.name == name), None)

    def tool(self, name: str) -> ToolInfo | None:
        """The tool called ``name``, if any worker serves it."""
        return next((t for t in self.tools if t.name == name), None)
