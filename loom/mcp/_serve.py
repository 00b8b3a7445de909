"""The mesh as an MCP server: its tools (those this identity may call, and the patterns
allow) offered to any MCP client over stdio or Streamable HTTP, calls routed through
the broker with progress and cancellation mapped, ``list_changed`` as workers come and
go (the directory is read every second)."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal

import anyio
import mcp_types as types
from mcp.server.lowlevel.server import NotificationOptions, Server
from mcp.server.stdio import stdio_server
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged
from mcp.shared.exceptions import MCPError
from pydantic import TypeAdapter

from loom.errors import ToolError, UnknownToolError
from loom.keys import dashboard_token
from loom.logs import get_logger
from loom.session import ToolClient, ToolInfo

__all__ = ["MeshServer", "serve_mesh"]

_CONTENT: TypeAdapter[Any] = TypeAdapter(types.ContentBlock)
_POLL = 1.0
"""Seconds between two readings of the directory (for ``list_changed``)."""
_MAX_CONNECTIONS = 256
_MAX_PENDING = 64
"""Progress notifications being sent at once, over all calls (more are dropped)."""
"""Handshake-era connections told of list changes at most (the most recent)."""

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class MeshServer:
    """An MCP server whose tools are the mesh's, through ``client``.

    Args:
        client: a connected tool client (its identity decides which tools it may call).
        patterns: shell-style patterns of the tool names offered.
    """

    def __init__(self, client: ToolClient, patterns: list[str] | None = None) -> None:
        self.client = client
        self.patterns = patterns or ["*"]
        self.log = get_logger("loom.mcp.serve")
        self._bus = InMemorySubscriptionBus()
        self._connections: dict[int, Any] = {}
        self._seen: frozenset[tuple[str, str]] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self.server: Server[Any] = Server(
            "loom",
            version=_version(),
            instructions="Tools of a Loom mesh: each call runs on a worker process "
            "the Loom broker picks.",
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_subscriptions_listen=ListenHandler(self._bus),
        )

    def options(self) -> Any:
        return self.server.create_initialization_options(NotificationOptions(tools_changed=True))

    async def _tools(self) -> list[ToolInfo]:
        directory = await self.client.directory()
        return [
            tool
            for tool in directory.tools
            if any(fnmatch.fnmatchcase(tool.name, p) for p in self.patterns)
        ]

    def _remember(self, session: Any, version: str) -> None:
        """A handshake-era connection, to tell of list changes (2026-07-28 clients
        listen on ``subscriptions/listen`` instead)."""
        if version in types.version.MODERN_PROTOCOL_VERSIONS:
            return
        key = id(getattr(session, "_connection", session))
        self._connections.pop(key, None)
        self._connections[key] = session
        while len(self._connections) > _MAX_CONNECTIONS:
            self._connections.pop(next(iter(self._connections)))

    async def _list_tools(
        self, ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        self._remember(ctx.session, ctx.protocol_version)
        tools = await self._tools()
        self._seen = _signature(tools)
        listed = []
        for tool in tools:
            try:
                listed.append(_mcp_tool(tool))
            except Exception as exc:  # a worker's odd spec leaves only its tool out
                self.log.warning("tool not offered", tool=tool.name, error=str(exc)[:500])
        return types.ListToolsResult(tools=listed)

    async def _call_tool(
        self, ctx: Any, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        self._remember(ctx.session, ctx.protocol_version)
        name = params.name
        if not any(fnmatch.fnmatchcase(name, p) for p in self.patterns):
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {name}")
        reports = 0

        def progress(data: Any) -> None:
            nonlocal reports
            reports += 1
            if len(self._pending) >= _MAX_PENDING:  # a client not reading: progress is lossy
                return
            done, total, message = _progress(data, reports)
            task = asyncio.ensure_future(ctx.session.report_progress(done, total, message))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

        try:
            result = await self.client.call(name, params.arguments or {}, on_progress=progress)
        except UnknownToolError as exc:
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {name} ({exc})") from None
        except ToolError as exc:
            text = f"{exc.code}: {exc}"
            return types.CallToolResult(content=[types.TextContent(text=text)], is_error=True)
        return _mcp_result(result)

    async def watch(self) -> None:
        """Tell clients when the offered tools change; runs until cancelled."""
        while True:
            await anyio.sleep(_POLL)
            try:
                tools = await self._tools()
            except Exception as exc:  # the broker is away: try again next time
                self.log.warning("directory unavailable", error=str(exc))
                continue
            seen = _signature(tools)
            if self._seen is None:
                self._seen = seen
            if seen == self._seen:
                continue
            self._seen = seen
            self.log.info("tools changed", tools=len(tools))
            await self._bus.publish(ToolsListChanged())
            for key, session in list(self._connections.items()):
                sent = False
                with contextlib.suppress(Exception), anyio.move_on_after(1.0):
                    await session.send_tool_list_changed()
                    sent = True
                if not sent:  # gone, or not reading: not told again
                    self._connections.pop(key, None)

    async def serve_stdio(self) -> None:
        """Serve one client on standard input and output until it closes them."""
        async with stdio_server() as (read, write), anyio.create_task_group() as group:
            group.start_soon(self.watch)
            await self.server.run(read, write, self.options())
            group.cancel_scope.cancel()

    def http_app(self, token: str | None, host: str = "127.0.0.1") -> Any:
        """The Streamable HTTP app at ``/mcp``: ``Origin`` and ``Host`` checked (the
        SDK's DNS-rebinding protection, on for loopback), and ``Authorization: Bearer
        TOKEN`` required when ``token`` is set."""
        app = self.server.streamable_http_app(host=host)
        return _Bearer(app, token) if token else app


class _Bearer:
    """ASGI: HTTP requests without ``Authorization: Bearer <token>`` get 401."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                body = b'{"error": "unauthorized: send Authorization: Bearer <token>"}'
                headers = [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b'Bearer realm="loom"'),
                ]
                await send({"type": "http.response.start", "status": 401, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


async def serve_mesh(
    broker: str,
    *,
    transport: Literal["stdio", "http"] = "stdio",
    host: str = "127.0.0.1",
    port: int = 7790,
    patterns: list[str] | None = None,
    token: str | None = None,
    connect_timeout: float = 5.0,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the mesh's tools over MCP until the client leaves (stdio) or the process is
    told to stop (HTTP: SIGINT or SIGTERM).

    Args:
        token: HTTP: the bearer token clients send (``None``: the Loom home's dashboard
            token; ``"none"``: no token, for a trusted loopback).
        ready: called with the URL (HTTP) or ``"stdio"`` once serving.
    """
    client = await ToolClient.connect(broker, name="mcp-serve", timeout=connect_timeout)
    try:
        mesh = MeshServer(client, patterns)
        if transport == "stdio":
            if ready is not None:
                ready("stdio")
            await mesh.serve_stdio()
            return
        import uvicorn

        secret = None if token == "none" else token or dashboard_token()
        app = mesh.http_app(secret, host)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        server = uvicorn.Server(config)
        watcher = asyncio.ensure_future(mesh.watch())
        try:
            serving = asyncio.ensure_future(server.serve())
            while not server.started and not serving.done():
                await asyncio.sleep(0.02)
            if server.started:
                url = f"http://{host}:{port}/mcp"
                get_logger("loom.mcp.serve").info("serving the mesh over MCP", url=url)
                if ready is not None:
                    ready(url)
            await serving
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    finally:
        client.close()


def _signature(tools: list[ToolInfo]) -> frozenset[tuple[str, str]]:
    return frozenset(
        (tool.name, json.dumps(tool.schema_, sort_keys=True, default=repr)) for tool in tools
    )


def _mcp_tool(tool: ToolInfo) -> types.Tool:
    hints = dict(tool.annotations or {})
    hints.pop("mcp", None)
    title = hints.pop("title", None)
    annotations = None
    known = {"readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint"}
    if any(key in hints for key in known) or tool.idempotent:
        fields = {key: hints[key] for key in known if key in hints}
        fields.setdefault("idempotentHint", tool.idempotent or None)
        annotations = types.ToolAnnotations.model_validate(
            {k: v for k, v in fields.items() if v is not None}
        )
    schema = tool.schema_ if tool.schema_.get("type") == "object" else {"type": "object"}
    returns = tool.returns
    if "mcp" in (tool.annotations or {}) and returns is not None:  # a bridged tool: its own
        returns = (returns.get("properties") or {}).get("structured") or None
    output = returns if isinstance(returns, dict) and returns.get("type") == "object" else None
    description = tool.description
    if tool.approval:
        description = f"{description}\n\n(Each call waits for a person's approval.)".strip()
    return types.Tool(
        name=tool.name,
        title=title if isinstance(title, str) else None,
        description=description or None,
        input_schema=schema,
        output_schema=output,
        annotations=annotations,
    )


def _mcp_result(result: Any) -> types.CallToolResult:
    """A Loom result as MCP: a bridged MCP result's own content; otherwise the value as
    JSON text, and as structured content when it is a map."""
    if isinstance(result, dict) and isinstance(result.get("content"), list) and "text" in result:
        try:
            content = [_content(item) for item in result["content"]]
            structured = result.get("structured")
            return types.CallToolResult(
                content=content, structured_content=structured if structured else None
            )
        except Exception:  # not MCP content after all: sent as a value
            pass
    text = result if isinstance(result, str) else json.dumps(result, default=repr)
    structured = result if isinstance(result, dict) else None
    return types.CallToolResult(
        content=[types.TextContent(text=text)], structured_content=structured
    )


def _content(item: dict[str, Any]) -> Any:
    return _CONTENT.validate_python(item)


def _progress(data: Any, count: int) -> tuple[float, float | None, str | None]:
    """A Loom progress report as MCP's (progress, total, message): a bridged report
    keeps its numbers; anything else counts reports and says its data as the message."""
    if isinstance(data, dict) and isinstance(data.get("progress"), int | float):
        total = data.get("total")
        message = data.get("message")
        return (
            float(data["progress"]),
            float(total) if isinstance(total, int | float) else None,
            message if isinstance(message, str) else None,
        )
    text = data if isinstance(data, str) else json.dumps(data, default=repr)
    message = None if data is None else text[:4096]
    return float(count), None, message


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("loom-mesh")
    except PackageNotFoundError:
        return "0"
