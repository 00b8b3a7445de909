"""``ServerLink``: one MCP server kept connected, listed and callable.

A link starts the server (stdio) or reaches it (Streamable HTTP, else HTTP+SSE), lets
the SDK negotiate the protocol version (``server/discover`` for the 2026-07-28
generation, else ``initialize``), lists what the server offers (every page), follows
its list changes, and starts it again with backoff when it dies. Calls made while it is
down wait for it, up to their deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import mcp_types as types
from mcp import Client, StdioServerParameters, stdio_client
from mcp.client.session import ClientRequestContext, IncomingMessage
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from loom.errors import ToolError, ToolTimeoutError, WorkerLostError
from loom.logs import get_logger
from loom.mcp._results import mcp_failure
from loom.mcp._settings import McpServerSettings
from loom.tools import ToolContext
from loom.tools.sandbox import Sandbox, confined_command

__all__ = ["Hooks", "ServerLink"]

_LEASH = Path(__file__).with_name("_leash.py")
_DEBOUNCE = 0.2
"""Seconds of quiet after a list change before the server is listed again."""
_MAX_PAGES = 100
"""Pages of one listing read at most (a server paginating forever cannot hang a link)."""
_STEADY = 60.0
"""Seconds a connection must last for the restart backoff to start over."""

Hook = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
"""Asks the mesh: (topic, the server's request params) -> the result to answer with."""


class Hooks:
    """How a link answers a server's own requests: where sampling and elicitation go
    (``None``: answered "not supported"), and the roots it names."""

    def __init__(self, ask: Hook | None = None) -> None:
        self.ask = ask


class _Watched:
    """The transport's read stream, calling ``ended`` when it ends (the server exited or
    the connection closed), so a link notices a death even with no call in flight."""

    def __init__(self, stream: Any, ended: Callable[[], None]) -> None:
        self._stream = stream
        self._ended = ended

    @property
    def last_context(self) -> Any:
        return getattr(self._stream, "last_context", None)

    async def receive(self) -> Any:
        try:
            return await self._stream.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._ended()
            raise

    async def aclose(self) -> None:
        await self._stream.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class ServerLink:
    """One MCP server, by its mesh name.

    Attributes:
        tools: the server's tools as last listed.
        resources, templates, prompts: whether it offers them (capabilities).
        protocol: the negotiated protocol version ("" until connected).
        transport: ``stdio``, ``http`` or ``sse`` once connected.
        restarts: connections made after the first.
    """

    def __init__(
        self,
        name: str,
        settings: McpServerSettings,
        *,
        on_change: Callable[[], None],
        hooks: Hooks | None = None,
        jail: Path | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.tools: list[types.Tool] = []
        self.resources = False
        self.prompts = False
        self.protocol = ""
        self.transport = ""
        self.restarts = 0
        self.log = get_logger("loom.mcp", server=name)
        self._on_change = on_change
        self._hooks = hooks or Hooks()
        self._jail = jail
        self._client: Client | None = None
        self._up = asyncio.Event()
        self._lost = asyncio.Event()
        self._changed = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._scope: anyio.CancelScope | None = None
        self._task: asyncio.Task[None] | None = None
        self._sse_only = settings.transport == "sse"

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> bool:
        """Begin keeping the server connected; wait up to its ``connect_timeout`` for the
        first connection. Returns whether it is up (else it keeps trying)."""
        self._task = asyncio.create_task(self._supervise(), name=f"mcp-{self.name}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.connect_timeout):
                await self._up.wait()
        return self._up.is_set()

    async def stop(self) -> None:
        """Disconnect; a stdio server's whole process group ends. Idempotent."""
        self._stopping = True
        self._stopped.set()  # ends a backoff wait at once
        if self._scope is not None:
            self._scope.cancel()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def up(self) -> bool:
        return self._up.is_set()

    async def _supervise(self) -> None:
        delay = self.settings.restart_backoff
        loop = asyncio.get_running_loop()
        while not self._stopping:
            began = loop.time()
            try:
                await self._connection()
            except Exception as exc:  # a failed start or a broken connection: try again
                self.log.warning("mcp server unavailable", error=_describe(exc))
            self._client = None
            self._up.clear()
            if self._stopping:
                break
            if loop.time() - began > _STEADY:
                delay = self.settings.restart_backoff
            self.log.info("mcp server restarting", after=round(delay, 2))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopped.wait()
            delay = min(delay * 2, self.settings.max_backoff)
            self.restarts += 1

    async def _connection(self) -> None:
        """One connection, from start to loss (or stop)."""
        self._lost = asyncio.Event()  # this connection's: a late call of another cannot set it
        scope = self._scope = anyio.CancelScope()
        timer = asyncio.get_running_loop().call_later(self.settings.connect_timeout, scope.cancel)
        try:
            with scope:
                async with self._connected() as client:
                    timer.cancel()
                    async with anyio.create_task_group() as group:
                        group.start_soon(self._follow_changes, client)
                        if client.protocol_version in MODERN_PROTOCOL_VERSIONS:
                            group.start_soon(self._listen, client)
                        await self._lost.wait()
                        group.cancel_scope.cancel()
        finally:
            timer.cancel()
            self._scope = None
        if scope.cancelled_caught and not self._stopping and not self._up.is_set():
            raise TimeoutError(f"no handshake within {self.settings.connect_timeout:g}s")
        if not self._stopping:
            self.log.warning("mcp server connection lost")

    @contextlib.asynccontextmanager
    async def _connected(self) -> AsyncIterator[Client]:
        """The client, handshake done and the server listed; for a URL in ``auto``, on
        Streamable HTTP, else on the HTTP+SSE transport."""
        kinds = ["stdio"] if self.settings.command is not None else ["http", "sse"]
        if self.settings.transport in ("http", "sse"):
            kinds = [self.settings.transport]
        elif self._sse_only:
            kinds = ["sse"]
        for index, kind in enumerate(kinds):
            try:
                client = Client(
                    self._transport(kind),
                    mode=self.settings.protocol,
                    cache=None,
                    message_handler=self._on_message,
                    sampling_callback=self._sample if self._sampling_topic else None,
                    elicitation_callback=self._elicit if self._elicitation_topic else None,
                    list_roots_callback=self._roots if self.settings.roots else None,
                    client_info=types.Implementation(name="loom", version=_version()),
                )
                entered = await client.__aenter__()
            except Exception as exc:
                if index + 1 == len(kinds):
                    raise
                self.log.info("streamable http refused, trying sse", error=_describe(exc))
                continue
            try:
                await self._list(entered)
                self._client = entered
                self.transport = kind
                self._sse_only = kind == "sse" and self.settings.transport == "auto"
                self.protocol = entered.protocol_version
                self._up.set()
                self.log.info(
                    "mcp server connected",
                    transport=kind,
                    protocol=self.protocol,
                    tools=len(self.tools),
                )
                self._on_change()
                yield entered
            finally:
                self._up.clear()
                self._client = None
                # not under a scope of ours: the client's task groups must be the
                # innermost scopes when they exit (its stdio shutdown shields itself)
                await entered.__aexit__(None, None, None)
            return

    def _transport(self, kind: str) -> Any:
        settings = self.settings
        if kind == "stdio":
            assert settings.command is not None
            command = [settings.command, *settings.args]
            policy = None if settings.sandbox is None else Sandbox().merged(settings.sandbox)
            if sys.platform == "linux":  # the server's processes end with this one
                leash = [sys.executable, "-I", str(_LEASH), *_rlimits(policy, settings.sandbox)]
                if policy is None:  # in bubblewrap the parent is its init (--die-with-parent)
                    leash += ["--parent", str(os.getpid())]
                command = [*leash, *command]
            if policy is not None:
                jail = policy.fs.jail or self._jail or Path.cwd()
                command = confined_command(command, policy, jail)
            params = StdioServerParameters(
                command=command[0],
                args=command[1:],
                env=settings.env or None,
                cwd=settings.cwd,
            )
            return _watched(stdio_client(params, errlog=sys.stderr), self._ender())
        assert settings.url is not None
        headers = {**settings.headers}
        for header, variable in settings.headers_env.items():
            headers[header] = os.environ.get(variable, "")
        if kind == "sse":
            return _watched(sse_client(settings.url, headers=headers or None), self._ender())
        http = create_mcp_http_client(headers=headers or None)
        transport = streamable_http_client(settings.url, http_client=http)
        return _watched(transport, self._ender(), http)

    def _ender(self) -> Callable[[], None]:
        """What the connection being made calls when its stream ends: calls from then on
        wait for the next connection (a late end of an older one changes nothing)."""
        lost = self._lost

        def ended() -> None:
            if lost is self._lost:
                self._up.clear()
                self._client = None
            lost.set()

        return ended

    async def _list(self, client: Client) -> None:
        capabilities = client.server_capabilities
        tools: list[types.Tool] = []
        cursor: str | None = None
        for _ in range(_MAX_PAGES):
            page = await client.list_tools(cursor=cursor)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        self.tools = tools
        self.resources = self.settings.resources and capabilities.resources is not None
        self.prompts = self.settings.prompts and capabilities.prompts is not None

    async def _on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, Exception):
            self.log.info("mcp transport error", error=_describe(message))
            return
        root = getattr(message, "root", message)
        if isinstance(
            root,
            types.ToolListChangedNotification
            | types.PromptListChangedNotification
            | types.ResourceListChangedNotification,
        ):
            self._changed.set()
        elif isinstance(root, types.LoggingMessageNotification):
            data = str(root.params.data)[:1000]
            self.log.info("mcp server log", level=root.params.level, data=data)

    async def _listen(self, client: Client) -> None:
        """2026-07-28 servers announce list changes on a ``subscriptions/listen`` stream."""
        try:
            async with client.listen(
                tools_list_changed=True,
                prompts_list_changed=self.prompts,
                resources_list_changed=self.resources,
            ) as subscription:
                async for _ in subscription:
                    self._changed.set()
        except Exception as exc:  # a server that does not offer it: changes go unseen
            self.log.info("mcp list changes not followed", error=_describe(exc))

    async def _follow_changes(self, client: Client) -> None:
        while True:
            await self._changed.wait()
            await anyio.sleep(_DEBOUNCE)  # a burst of changes is one listing
            self._changed.clear()
            try:
                with anyio.fail_after(self.settings.connect_timeout):
                    await self._list(client)
            except Exception as exc:  # a server that cannot list any more: start again
                self.log.warning("mcp listing failed", error=_describe(exc))
                self._mark_lost(client)
                return
            self.log.info("mcp server's lists changed", tools=len(self.tools))
            self._on_change()

    # --- calls -------------------------------------------------------------------

    async def request(
        self,
        method: Callable[[Client, ProgressFnT], Awaitable[Any]],
        context: ToolContext,
        *,
        what: str,
    ) -> Any:
        """Run one request on the server for a mesh call: waits for the server when it is
        down (up to the call's lease), passes progress on (each report extends the lease),
        ends as TIMEOUT when the lease or ``max_duration`` runs out and as WORKER_LOST
        when the server dies. A request refused because the server forgot the HTTP
        session is sent again once, on a new session.

        Raises:
            ToolError: with the code the failure maps to.
        """
        for attempt in range(2):
            try:
                return await self._request(method, context, what)
            except _SessionExpired:
                if attempt:
                    break
                self.log.info("mcp session expired: initializing a new one")
        message = f"MCP server {self.name} keeps refusing its HTTP session"
        raise WorkerLostError(message, tool=context.tool)

    async def _request(
        self,
        method: Callable[[Client, ProgressFnT], Awaitable[Any]],
        context: ToolContext,
        what: str,
    ) -> Any:
        loop = asyncio.get_running_loop()
        lease = context.timeout or self.settings.timeout
        began = loop.time()
        if not self._up.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(lease):
                    await self._up.wait()
        client = self._client
        if client is None:
            message = f"MCP server {self.name} is down (restarts so far: {self.restarts})"
            raise WorkerLostError(message, tool=context.tool)

        cap = began + self.settings.max_duration
        deadline: asyncio.Timeout | None = None

        async def progress(progress: float, total: float | None, message: str | None) -> None:
            context.progress({"progress": progress, "total": total, "message": message})
            if deadline is not None:  # the lease starts again (the broker's does too)
                deadline.reschedule(min(loop.time() + lease + 1.0, cap))

        try:
            # the broker's own timeout comes first: the bridge gives a second's margin
            async with asyncio.timeout(min(began + lease + 1.0, cap)) as deadline:
                return await method(client, progress)  # cancelled: the SDK tells the server
        except TimeoutError:
            took = self.settings.max_duration if loop.time() >= cap else lease
            raise ToolTimeoutError(
                f"{context.tool}: MCP server {self.name} gave no answer or progress "
                f"within {took:g}s",
                tool=context.tool,
            ) from None
        except MCPError as exc:
            if self.transport == "http" and _session_expired(exc):
                self._mark_lost(client)  # the retry waits for the new session
                raise _SessionExpired from None
            if exc.error.code == types.CONNECTION_CLOSED:
                self._mark_lost(client)
                message = f"MCP server {self.name} went away during {what}"
                raise WorkerLostError(message, tool=context.tool) from None
            raise mcp_failure(exc, context.tool) from None
        except ToolError:
            raise
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self._mark_lost(client)
            message = f"MCP server {self.name} went away during {what}: {_describe(exc)}"
            raise WorkerLostError(message, tool=context.tool) from None

    def _mark_lost(self, client: Client) -> None:
        """``client``'s connection is gone: calls from now on wait for the next one.
        Nothing if a newer connection has taken its place."""
        if client is self._client:
            self._up.clear()
            self._client = None
            self._lost.set()

    # --- the server's own requests -----------------------------------------------

    @property
    def _sampling_topic(self) -> str | None:
        return self.settings.sampling if self._hooks.ask is not None else None

    @property
    def _elicitation_topic(self) -> str | None:
        return self.settings.elicitation if self._hooks.ask is not None else None

    async def _sample(
        self, context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.ErrorData:
        answer: types.CreateMessageResult | types.ErrorData
        answer = await self._forward(self._sampling_topic, params, types.CreateMessageResult)
        return answer

    async def _elicit(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        answer: types.ElicitResult | types.ErrorData
        answer = await self._forward(self._elicitation_topic, params, types.ElicitResult)
        return answer

    async def _forward(self, topic: str | None, params: Any, result: type[Any]) -> Any:
        assert topic is not None and self._hooks.ask is not None
        data = params.model_dump(mode="json", by_alias=True, exclude_none=True)
        try:
            answer = await self._hooks.ask(topic, {"server": self.name, **data})
            return result.model_validate(answer)
        except Exception as exc:  # never leave the server waiting
            self.log.warning("mcp server request not answered", topic=topic, error=str(exc))
            return types.ErrorData(code=types.INTERNAL_ERROR, message=f"not answered: {exc}")

    async def _roots(self, context: ClientRequestContext) -> types.ListRootsResult:
        roots = [types.Root(uri=uri) for uri in self.settings.roots]  # type: ignore[arg-type]
        return types.ListRootsResult(roots=roots)


@contextlib.asynccontextmanager
async def _watched(
    transport: Any, ended: Callable[[], None], owned: Any = None
) -> AsyncIterator[tuple[Any, Any]]:
    async with contextlib.AsyncExitStack() as stack:
        if owned is not None:
            await stack.enter_async_context(owned)
        read, write = await stack.enter_async_context(transport)
        yield _Watched(read, ended), write


class _SessionExpired(Exception):
    """The HTTP server answered 404 for the session: it forgot it (restarted...)."""


_SESSION_CODES = (types.INVALID_REQUEST, types.REQUEST_TIMEOUT, types.CONNECTION_CLOSED)


def _session_expired(exc: MCPError) -> bool:
    """An HTTP server that no longer knows the session: the SDK's own words for a 404
    without a body ("Session terminated"), or the server's, which differ by SDK
    (-32600 "Session not found", -32001 "Session not found", "No valid session ID"...)."""
    return exc.error.code in _SESSION_CODES and "session" in exc.error.message.lower()


def _rlimits(policy: Sandbox | None, table: dict[str, Any] | None) -> list[str]:
    """The leash's limits for a sandboxed server: open files and file size; address
    space only when the policy's table names ``memory_mb`` (JIT runtimes such as Node
    reserve far more address space than they use, so a default limit would break them)."""
    if policy is None:
        return []
    limits = policy.limits
    args = ["--rlimit", f"nofile={limits.open_files}"]
    args += ["--rlimit", f"fsize={limits.file_size_mb << 20}"]
    if "memory_mb" in (table or {}).get("limits", {}):
        args += ["--rlimit", f"as={limits.memory_mb << 20}"]
    return args


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in exc.exceptions)
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("loom-mesh")
    except PackageNotFoundError:
        return "0"
