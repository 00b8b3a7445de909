"""``[mcp.servers.NAME]``: the MCP servers a bridge attaches to the mesh.

Read by ``loom mcp attach FILE`` (and from ``configs/loom.toml``); light on purpose: it
imports no MCP library, so a settings file is validated without the ``mcp`` extra.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from loom.config import Section

__all__ = ["McpServerSettings", "McpSettings", "McpToolSettings"]

_SERVER = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class McpToolSettings(Section):
    """``[mcp.servers.NAME.tool."TOOL"]``: one tool's overrides (its MCP name)."""

    approval: bool | None = None
    """Each call waits for an approver's yes (``loom approve``)."""
    timeout: PositiveFloat | None = None
    """Seconds a call may go without an answer or a progress report."""
    idempotent: bool | None = None
    """A call may be run again when the server dies under it (default: the tool's
    ``idempotentHint``)."""


class McpServerSettings(Section):
    """One MCP server: a command (stdio) or a URL (Streamable HTTP, else HTTP+SSE)."""

    command: str | None = None
    """The program that runs the server over stdio (``uvx``, ``npx``, a path...)."""
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    """Variables added to the server's environment (which starts from ``HOME``,
    ``LOGNAME``, ``PATH``, ``SHELL``, ``TERM`` and ``USER`` only, as the SDK does)."""
    cwd: Path | None = None
    url: str | None = None
    """An HTTP server's endpoint (``http://127.0.0.1:3001/mcp``)."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Sent with every HTTP request (``Authorization``...)."""
    headers_env: dict[str, str] = Field(default_factory=dict)
    """Headers whose values are read from environment variables at start, so secrets stay
    out of the file: ``{Authorization = "GITHUB_MCP_AUTH"}``."""
    transport: Literal["auto", "stdio", "http", "sse"] = "auto"
    """``auto``: stdio for a command; for a URL, Streamable HTTP first, then the
    2024-11-05 HTTP+SSE transport."""
    protocol: Literal["auto", "legacy"] = "auto"
    """``auto``: the 2026-07-28 generation when the server offers it (``server/discover``),
    else the ``initialize`` handshake; ``legacy``: the handshake only."""
    timeout: PositiveFloat = 30.0
    """Seconds a call may go without an answer or a progress report (the Loom lease)."""
    max_duration: PositiveFloat = 600.0
    """Seconds a call may run at all, progress or not; then it ends as TIMEOUT."""
    connect_timeout: PositiveFloat = 30.0
    """Seconds to start the server (or reach it) and finish the handshake."""
    concurrency: PositiveInt = 8
    """Calls of one tool sent to this server at once."""
    approval: bool = False
    """Every tool of this server waits for an approver's yes."""
    sandbox: dict[str, Any] | None = None
    """Run the stdio server inside the tool sandbox, with this policy (its sections
    ``fs``, ``net``, ``limits``, ``env``, key by key over the defaults; ``{}`` for the
    defaults: no network, the file system read-only but a jail)."""
    tools: list[str] = Field(default_factory=lambda: ["*"])
    """Which of the server's tools the mesh gets (shell-style patterns of MCP names)."""
    tool: dict[str, McpToolSettings] = Field(default_factory=dict)
    """Per-tool overrides, by MCP name."""
    resources: bool = True
    """Offer ``NAME.resources.list``/``read``/``templates`` when the server has resources."""
    prompts: bool = True
    """Offer ``NAME.prompts.list``/``get`` when the server has prompts."""
    roots: list[str] = Field(default_factory=list)
    """``file://`` URIs answered to the server's ``roots/list`` (empty: not supported)."""
    sampling: str | None = None
    """A mesh topic: a server's ``sampling/createMessage`` becomes a request there, and
    the answering actor's reply is the result (unset: not supported)."""
    elicitation: str | None = None
    """A mesh topic: a server's ``elicitation/create`` becomes a request there (unset:
    not supported)."""
    restart_backoff: PositiveFloat = 0.5
    """Seconds before the first restart of a server that died; doubled per restart."""
    max_backoff: PositiveFloat = 30.0

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerSettings:
        if (self.command is None) == (self.url is None):
            raise ValueError("give either command (stdio) or url (HTTP)")
        if self.command is not None and self.transport not in ("auto", "stdio"):
            raise ValueError(f"transport {self.transport!r} needs a url, not a command")
        if self.url is not None and self.transport == "stdio":
            raise ValueError("transport 'stdio' needs a command, not a url")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url {self.url!r}: use http:// or https://")
        if self.sandbox is not None and self.command is None:
            raise ValueError("sandbox applies to stdio servers (a command) only")
        if self.sandbox is not None:
            from loom.tools.sandbox import Sandbox

            Sandbox().merged(self.sandbox)  # names the bad key
        return self

    @field_validator("roots")
    @classmethod
    def _file_uris(cls, roots: list[str]) -> list[str]:
        for root in roots:
            if not root.startswith("file://"):
                raise ValueError(f"root {root!r}: use a file:// URI")
        return roots


class McpSettings(Section):
    """``[mcp]``: the servers, by the name their tools get on the mesh (``NAME.TOOL``)."""

    servers: dict[str, McpServerSettings] = Field(default_factory=dict)

    @field_validator("servers")
    @classmethod
    def _names(cls, servers: dict[str, McpServerSettings]) -> dict[str, McpServerSettings]:
        for name in servers:
            if not _SERVER.match(name):
                raise ValueError(f"server name {name!r}: letters, digits, _ and -, 1 to 64")
        return servers
