"""``Worker``: a process serving tools to a running mesh through the broker."""

from __future__ import annotations

import asyncio
import collections
import functools
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import zmq

from loom.config import broker_address
from loom.errors import (
    EncodeError,
    InvalidParamsError,
    LoomError,
    PayloadTooLargeError,
    ProtocolError,
    ToolDefinitionError,
    ToolError,
)
from loom.logs import configure_logging, get_logger, logging_configured
from loom.protocol import (
    CALL,
    CANCEL,
    DEFAULT_MAX_PAYLOAD,
    DRAIN,
    FAIL,
    MAX_TOOLS,
    PROGRESS,
    READY,
    RESULT,
    Empty,
    decode_call,
    decode_ref,
    decode_value,
    encode_body,
    encode_failure,
    encode_ref,
    encode_value,
    max_frame,
)
from loom.session import KeySpec, Session, check_endpoint, serve_until_signalled
from loom.tools._tool import SchemaTool, Tool, ToolContext
from loom.tools.sandbox._host import probe_host
from loom.tools.sandbox._runner import SandboxRunner

__all__ = ["Worker", "WorkerStats"]


class WorkerStats:
    """What a worker counted."""

    __slots__ = ("calls", "cancelled", "failed", "invalid", "succeeded", "too_large")

    def __init__(self) -> None:
        self.calls = 0
        self.succeeded = 0
        self.failed = 0
        self.invalid = 0
        self.cancelled = 0
        self.too_large = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class _Running:
    __slots__ = ("context", "task", "tool")

    def __init__(self, tool: Tool, task: asyncio.Task[None], context: ToolContext) -> None:
        self.tool = tool
        self.task = task
        self.context = context


class Worker:
    """Attaches to a broker and serves ``tools`` until stopped.

    ``async def`` tools run on the worker's event loop, ``def`` tools in a thread pool (one
    thread per unit of their concurrency) so heartbeats keep flowing while they work.

    Args:
        tools: ``@tool`` functions (plain functions are made tools with the defaults).
        broker: the broker's control endpoint (``None``: ``$LOOM_BROKER`` in ``run()``,
            else ``tcp://127.0.0.1:7700``).
        name: the worker's name in the directory (default ``worker-<pid>``).
        context: the zmq context; a private one by default.
        grace: seconds ``stop()`` (and SIGTERM) lets calls in flight finish.
        connect_timeout: seconds ``start()`` waits for the broker.
        jail: the working directory of sandboxed tools whose policy names none
            (default: a temporary directory, removed when the worker stops).
        key: the CURVE keys to present: a key file, ``"none"`` (no CURVE), or ``None``
            for ``$LOOM_KEY``, else the Loom home's local identity.

    Raises:
        ToolDefinitionError: a function cannot be made a tool.
        ValueError: two tools share a name.
    """

    def __init__(
        self,
        tools: Iterable[Tool | Any],
        *,
        broker: str | None = None,
        name: str | None = None,
        context: zmq.Context[Any] | None = None,
        grace: float = 10.0,
        connect_timeout: float = 10.0,
        jail: Path | None = None,
        key: KeySpec = None,
    ) -> None:
        self.key = key
        self.tools: dict[str, Tool] = {}
        for item in tools:
            made = item if isinstance(item, Tool) else Tool(item)
            if made.name in self.tools:
                raise ValueError(f"two tools are named {made.name!r}")
            self.tools[made.name] = made
        if len(self.tools) > MAX_TOOLS:
            raise ValueError(f"a worker serves at most {MAX_TOOLS} tools")
        self.broker = broker
        self.name = name or f"worker-{os.getpid()}"
        self.grace = grace
        self.stats = WorkerStats()
        self.log = get_logger("loom.worker", worker=self.name)
        self._context = context
        self._own_context = context is None
        self._connect_timeout = connect_timeout
        self._session: Session | None = None
        self._running: dict[int, _Running] = {}
        self._abandoned: set[int] = set()
        self._max_payload = DEFAULT_MAX_PAYLOAD
        self._draining = False
        threads = sum(t.concurrency for t in self.tools.values() if not t.is_async)
        self._pool = ThreadPoolExecutor(max(threads, 1), thread_name_prefix="loom-tool")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._backlog: collections.deque[list[bytes]] = collections.deque()
        self._flusher: asyncio.Task[None] | None = None
        self._stuck = 0
        """``def`` tools abandoned at stop, still running in their threads."""
        self._jail = jail
        self._own_jail: Path | None = None
        self._sandboxes: dict[str, SandboxRunner] = {}
        """Tool name -> the sandbox that runs it (one per policy and jail)."""

    # --- lifecycle ---------------------------------------------------------------

    def run(self) -> None:
        """Start, serve until SIGINT or SIGTERM, drain, stop. Blocks; for scripts.

        A ``def`` tool still running after the grace period cannot be interrupted (it is
        a thread); the process then ends with ``os._exit(0)`` rather than wait for it.
        """
        self.broker = check_endpoint(broker_address(self.broker))
        if not logging_configured():
            configure_logging()
        asyncio.run(serve_until_signalled(self.start, self.stop))
        if self._stuck:
            self.log.warning("exiting with tool threads still running", threads=self._stuck)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

    async def start(self) -> None:
        """Connect, announce the tools, and take calls.

        Raises:
            BrokerUnavailableError: the broker did not answer in time.
            VersionMismatchError: the broker speaks another protocol version.
            ToolsRefusedError: the broker refused the tools.
        """
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        if self._context is None:
            self._context = zmq.Context()
        session = Session(
            self.broker or broker_address(None),
            self._context,
            name=self.name,
            role="worker",
            log=self.log,
            key=self.key,
        )
        session.stats = self._report_stats
        session.handlers[CALL] = self._on_call
        session.handlers[CANCEL] = self._on_cancel
        session.restored_hooks.append(self._announce)
        hello = await session.open(self._connect_timeout)
        self._session = session
        self._max_payload = hello.max_payload
        try:
            await self._start_sandboxes()
            await self._announce()
        except BaseException:
            await self._close_sandboxes()
            self._close()
            raise
        self.log.info("worker ready", broker=self.broker, tools=sorted(self.tools))

    def _report_stats(self) -> dict[str, float]:
        """What the broker's metrics show of this worker (sent with each heartbeat)."""
        return {**self.stats.as_dict(), "running": len(self._running)}

    async def _start_sandboxes(self) -> None:
        """One launcher per distinct (policy, jail), started before the tools are
        announced so a host that cannot confine them fails the start, not a call."""
        groups: dict[tuple[str, Path], list[Tool]] = {}
        for item in self.tools.values():
            if item.sandbox is None:
                continue
            jail = item.sandbox.fs.jail or self._jail
            if jail is None:
                self._own_jail = Path(tempfile.mkdtemp(prefix="loom-jail-"))
                jail = self._jail = self._own_jail
            groups.setdefault((item.sandbox.model_dump_json(), jail.resolve()), []).append(item)
        host = probe_host() if groups else None
        for (_, jail), members in groups.items():
            assert host is not None and members[0].sandbox is not None
            runner = SandboxRunner(
                members,
                members[0].sandbox,
                jail,
                host,
                max_payload=self._max_payload,
                progress=self._relay_progress,
            )
            for member in members:
                self._sandboxes[member.name] = runner
        runners = {id(r): r for r in self._sandboxes.values()}.values()
        await asyncio.gather(*(runner.start() for runner in runners))

    async def _announce(self) -> None:
        assert self._session is not None
        if self._draining:  # a broker that forgot us while we drain: stay forgotten
            return
        body = {
            "name": self.name,
            "pid": os.getpid(),
            "tools": [self._spec(t) for t in self.tools.values()],
        }
        size = len(encode_body(body))
        if size > max_frame(self._max_payload):  # the broker would drop the connection
            raise ToolDefinitionError(
                f"the tools' specs take {size} bytes, more than the broker's frames allow "
                f"({max_frame(self._max_payload)}): serve them from several workers"
            )
        await self._session.request(READY, body, Empty, timeout=self._connect_timeout)

    async def replace_tools(self, tools: Iterable[Tool]) -> None:
        """Serve ``tools`` from now on instead of the present set, and say so to the
        broker: tools left out stop taking calls (those in flight finish), new ones start.
        For ``async def`` tools without a sandbox (a bridge's, whose set changes at run
        time).

        Raises:
            ValueError: two tools share a name, there are too many, or one needs a
                thread or a sandbox.
            ToolsRefusedError: the broker refused the new set.
        """
        made: dict[str, Tool] = {}
        for item in tools:
            if item.name in made:
                raise ValueError(f"two tools are named {item.name!r}")
            if not item.is_async or item.sandbox is not None:
                raise ValueError(f"{item.name}: only async tools without a sandbox change")
            made[item.name] = item
        if len(made) > MAX_TOOLS:
            raise ValueError(f"a worker serves at most {MAX_TOOLS} tools")
        before, self.tools = self.tools, made
        if self._session is not None:
            try:
                await self._announce()
            except BaseException:
                self.tools = before  # the broker still has the old set: serve it
                raise

    def _spec(self, item: Tool) -> dict[str, Any]:
        """A tool's READY spec; a sandboxed tool's carries the layers that confine it."""
        sandbox = self._sandboxes.get(item.name)
        report = None
        if sandbox is not None:  # a line the broker keeps at most 4096 characters of
            report = {layer: line[:4096] for layer, line in sandbox.report.items()}
        return {**item.spec(), "sandbox": report}

    async def stop(self, grace: float | None = None) -> None:
        """Take no more calls, let those in flight finish (up to ``grace`` seconds, default
        the worker's), say BYE, close. The broker retries or fails what is left.
        Idempotent."""
        if self._session is None or self._draining:
            return
        self._draining = True
        grace = self.grace if grace is None else grace
        try:
            await self._session.request(DRAIN, {}, Empty, timeout=min(grace, 2.0) or 0.1)
        except LoomError:
            self.log.warning("broker did not confirm the drain")
        tasks = {running.task for running in self._running.values()}
        if tasks:
            self.log.info("draining", in_flight=len(tasks), grace=grace)
            await asyncio.wait(tasks, timeout=grace)
        left = list(self._running)
        self._abandoned.update(left)
        for token in left:
            running = self._running[token]
            running.context.cancel()
            running.task.cancel()
            self._stuck += not running.tool.is_async and running.tool.name not in self._sandboxes
        if left:
            self.log.warning("calls left to the broker", calls=len(left))
        if self._flusher is not None:  # answers still waiting for room on the link
            await asyncio.wait({self._flusher}, timeout=1.0)
        await self._close_sandboxes()
        self._close()
        self.log.info("worker stopped", **self.stats.as_dict())

    async def _close_sandboxes(self) -> None:
        runners = {id(r): r for r in self._sandboxes.values()}.values()
        await asyncio.gather(*(runner.close() for runner in runners))
        self._sandboxes.clear()
        if self._own_jail is not None:
            shutil.rmtree(self._own_jail, ignore_errors=True)
            self._own_jail = None

    def _close(self) -> None:
        if self._session is not None:
            self._session.close(bye=True)
            self._session = None
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._own_context and self._context is not None:
            self._context.term()
            self._context = None

    # --- calls -------------------------------------------------------------------

    def _on_call(self, meta: bytes, body: bytes) -> None:
        try:
            token, name, timeout, _, approved_by, caller = decode_call(meta)
        except ProtocolError as exc:
            self._drop(exc)
            return
        self.stats.calls += 1
        tool = self.tools.get(name)
        if tool is None:
            self._fail(token, "UNKNOWN_TOOL", f"this worker does not serve {name!r}")
            return
        if tool.approval and not approved_by:  # the worker checks too, whatever routed it
            self._fail(token, "DENIED", f"{name} needs approval; this call has none")
            return
        try:
            args = decode_value(body)
            kwargs = tool.bind(args)
        except ProtocolError as exc:
            self._fail(token, "MALFORMED", str(exc))
            return
        except InvalidParamsError as exc:
            self.stats.invalid += 1
            self._fail(token, "INVALID_PARAMS", str(exc), **exc.details)
            return
        context = ToolContext(token, name, timeout or 0.0, self._report, caller=caller)
        assert self._loop is not None
        sandbox = self._sandboxes.get(name)
        if sandbox is not None:
            run = self._run_sandboxed(token, tool, sandbox, args, context)
            task = self._loop.create_task(run)
        else:
            if tool.context_param is not None:
                kwargs[tool.context_param] = context
            task = self._loop.create_task(self._run(token, tool, kwargs, context))
        self._running[token] = _Running(tool, task, context)

    async def _run(
        self, token: int, tool: Tool, kwargs: dict[str, Any], context: ToolContext
    ) -> None:
        try:
            if tool.is_async:
                result = await tool.fn(**kwargs)
            else:
                assert self._loop is not None
                call = functools.partial(tool.fn, **kwargs)
                result = await asyncio.shield(self._loop.run_in_executor(self._pool, call))
        except asyncio.CancelledError:
            if token not in self._abandoned:
                self.stats.cancelled += 1
                self._fail(token, "CANCELLED", f"{tool.name} was cancelled")
            return
        except Exception as exc:
            self.stats.failed += 1
            if isinstance(exc, ToolError) and isinstance(tool, SchemaTool):
                self._fail(token, exc.code, _truncate(str(exc)), **exc.details)
                return  # a bridged tool's failure keeps its code (WORKER_LOST, TIMEOUT...)
            self.log.warning("tool failed", tool=tool.name, exc_info=exc)
            text = _truncate(str(exc))
            name = type(exc).__name__
            self._fail(token, "TOOL_ERROR", f"{name}: {text}", type=name, remote_message=text)
            return
        finally:
            self._running.pop(token, None)
        if context.cancelled:  # a thread that finished after its call was cancelled
            self.stats.cancelled += 1
            self._fail(token, "CANCELLED", f"{tool.name} was cancelled")
            return
        try:
            data = encode_value(result, self._max_payload)
        except PayloadTooLargeError as exc:
            self.stats.too_large += 1
            self.log.warning("result too large", tool=tool.name, size=exc.size, limit=exc.limit)
            self._fail(token, "TOO_LARGE", f"{tool.name}'s result: {exc}", size=exc.size)
            return
        except EncodeError as exc:
            self.stats.failed += 1
            self._fail(token, "TOOL_ERROR", str(exc), type="EncodeError", remote_message=str(exc))
            return
        self.stats.succeeded += 1
        self._send(encode_ref(RESULT, token, data))

    async def _run_sandboxed(
        self, token: int, tool: Tool, sandbox: SandboxRunner, args: Any, context: ToolContext
    ) -> None:
        try:
            data = await sandbox.call(token, tool, args, context)
        except asyncio.CancelledError:
            if token not in self._abandoned:
                self.stats.cancelled += 1
                self._fail(token, "CANCELLED", f"{tool.name} was cancelled")
            return
        except ToolError as exc:
            self.stats.failed += 1
            self._fail(token, exc.code, str(exc), **exc.details)
            return
        except LoomError as exc:  # the sandbox could not start again
            self.stats.failed += 1
            self.log.error("sandbox unavailable", tool=tool.name, error=str(exc))
            name = type(exc).__name__
            self._fail(token, "TOOL_ERROR", f"{name}: {exc}", type=name, remote_message=str(exc))
            return
        finally:
            self._running.pop(token, None)
        self.stats.succeeded += 1
        self._send(encode_ref(RESULT, token, data))

    def _relay_progress(self, token: int, body: bytes) -> None:
        if token in self._running:
            self._send(encode_ref(PROGRESS, token, body))

    def _on_cancel(self, meta: bytes, body: bytes) -> None:
        try:
            token = decode_ref(meta)
        except ProtocolError as exc:
            self._drop(exc)
            return
        running = self._running.get(token)
        if running is None:
            return  # finished meanwhile: its answer is on the way
        running.context.cancel()
        if running.tool.is_async or running.tool.name in self._sandboxes:
            running.task.cancel()
        # a thread cannot be interrupted: the tool sees context.cancelled, and its answer
        # becomes CANCELLED when it returns

    def _report(self, token: int, data: Any) -> None:
        """Progress from a tool, on the loop thread or the tool's own thread."""
        if threading.get_ident() == self._loop_thread:
            self._send_progress(token, data)
        elif self._loop is not None:
            self._loop.call_soon_threadsafe(self._send_progress, token, data)

    def _send_progress(self, token: int, data: Any) -> None:
        if token not in self._running:
            return
        try:
            body = encode_value(data, min(self._max_payload, 64 * 1024))
        except LoomError as exc:
            self.log.warning("progress data dropped", error=str(exc))
            body = b""
        self._send(encode_ref(PROGRESS, token, body))

    def _fail(self, token: int, code: str, message: str, **details: Any) -> None:
        self._send(encode_ref(FAIL, token, encode_failure(code, message, **details)))

    def _send(self, frames: list[bytes]) -> None:
        """Send an answer; when the link is full, keep it (in order) and retry: a lost
        answer would hold the call's slot at the broker until the worker leaves."""
        if self._session is None:
            self.log.warning("answer not sent: the worker is closed")
        elif self._backlog or not self._session.send(frames):
            self._backlog.append(frames)
            if self._flusher is None and self._loop is not None:
                self._flusher = self._loop.create_task(self._flush_backlog())

    async def _flush_backlog(self) -> None:
        delay = 0.001
        try:
            while self._backlog and self._session is not None:
                if self._session.send(self._backlog[0]):
                    self._backlog.popleft()
                    delay = 0.001
                else:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.1)
        finally:
            self._flusher = None

    def _drop(self, exc: ProtocolError) -> None:
        if self._session is not None:
            self._session.drops.drop(exc.reason, str(exc), plane="tools")


def _truncate(text: str, limit: int = 4096) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
