"""The worker's side of a sandbox: starts a launcher process for one policy, sends it
calls, and turns its answers into results or typed failures.

The launcher is started with a cleared environment, in its own session (process group),
optionally inside bubblewrap and a pids cgroup (both applied from out here). If it dies,
the calls it ran fail with ``TOOL_ERROR`` and the next call starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.machinery
import os
import signal
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from loom.errors import LoomError, ToolError, tool_error
from loom.logs import get_logger
from loom.protocol.pipe import FrameReader, pack_frame
from loom.tools.sandbox.host import HostLayers
from loom.tools.sandbox.policy import Sandbox
from loom.tools.tool import Tool, ToolContext

__all__ = ["SandboxError", "SandboxRunner", "tool_origin"]

_PATH = "/usr/local/bin:/usr/bin:/bin"


class SandboxError(LoomError):
    """A sandbox launcher could not start, or broke its protocol."""


class SandboxRunner:
    """One launcher process serving the tools that share a policy and a jail.

    Args:
        tools: the tools it loads (each must be importable by module or file).
        policy: their sandbox policy.
        jail: the working directory (created if missing).
        host: what the host supports, from :func:`loom.tools.sandbox.host.probe_host`.
        max_payload: the broker's payload limit, for results.
        progress: called with ``(token, encoded data)`` for each progress report.
        start_timeout: seconds the launcher has to load the tools and confine itself.
    """

    def __init__(
        self,
        tools: Iterable[Tool],
        policy: Sandbox,
        jail: Path,
        host: HostLayers,
        *,
        max_payload: int,
        progress: Callable[[int, bytes], None],
        start_timeout: float = 20.0,
    ) -> None:
        self.tools = {t.name: t for t in tools}
        self.policy = policy
        self.jail = jail
        self.host = host
        self.max_payload = max_payload
        self.progress = progress
        self.start_timeout = start_timeout
        self.report: dict[str, str] = {}
        self.log = get_logger("loom.sandbox", tools=sorted(self.tools))
        self._process: asyncio.subprocess.Process | None = None
        self._starting: asyncio.Future[None] | None = None
        self._calls: dict[int, tuple[asyncio.Future[bytes], str]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._cgroup: Path | None = None

    async def call(self, token: int, tool: Tool, args: Any, context: ToolContext) -> bytes:
        """Run one call in the sandbox; the encoded result.

        Raises:
            ToolError: the tool failed (``TOOL_ERROR``), hit a limit (``LIMIT_EXCEEDED``),
                was cancelled, or its result is too large.
            SandboxError: the launcher could not be started.
            asyncio.CancelledError: the awaiting task was cancelled (the call is killed).
        """
        await self._ensure_started()
        assert self._process is not None and self._process.stdin is not None
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._calls[token] = (future, tool.name)
        self._process.stdin.write(pack_frame("call", token, tool.name, args, context.timeout))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            self.cancel(token)
            raise
        finally:
            self._calls.pop(token, None)

    def cancel(self, token: int) -> None:
        """Kill a running call's process group (its answer becomes ``CANCELLED``)."""
        process = self._process
        if process is not None and process.stdin is not None and token in self._calls:
            process.stdin.write(pack_frame("cancel", token))

    async def start(self) -> dict[str, str]:
        """Start the launcher now (else the first call does); the layers it applied.

        Raises:
            SandboxError: it failed to start, load the tools, or confine itself.
        """
        await self._ensure_started()
        return self.report

    async def _ensure_started(self) -> None:
        idle = self._starting is None or self._starting.done()
        if idle and self._process is not None and self._process.returncode is None:
            return
        if idle or self._starting is None:
            self._starting = asyncio.ensure_future(self._spawn())
        await asyncio.shield(self._starting)

    async def _spawn(self) -> None:
        self.jail.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "loom.tools.sandbox.launcher"]
        if self.host.bwrap:
            command = self.host.bwrap_command(self.policy, self.jail) + command
        self._cgroup = self.host.make_cgroup(self._pids_max())
        process = await asyncio.create_subprocess_exec(
            *self.host.enter_command(self._cgroup, command),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=self.jail,
            env=self._environment(),
            start_new_session=True,
        )
        self._process = process
        assert process.stdin is not None and process.stdout is not None
        init = {
            "sys_path": sys.path,
            "origins": sorted({tool_origin(t) for t in self.tools.values()}),
            "tools": sorted(self.tools),
            "policy": self.policy.model_dump(mode="json"),
            "jail": str(self.jail),
            "max_payload": self.max_payload,
            "protect": [os.getpid(), -os.getpgrp(), process.pid, -process.pid],
        }
        process.stdin.write(pack_frame("init", init))
        reader = FrameReader()
        try:
            async with asyncio.timeout(self.start_timeout):
                frame = await _first_frame(process.stdout, reader)
        except TimeoutError:
            await self._kill()
            self.host.leave_cgroup(self._cgroup)
            message = f"the sandbox launcher did not start in {self.start_timeout}s"
            raise SandboxError(message) from None
        if frame is None or frame[0] != "ready":
            await self._kill()
            self.host.leave_cgroup(self._cgroup)
            raise SandboxError("the sandbox launcher exited while starting (see its log)")
        self.report = {**frame[1], **self.host.outside_report(self._cgroup)}
        self.log.info("sandbox ready", pid=process.pid, **self.report)
        self._reader = asyncio.ensure_future(self._read(process, reader))

    def _environment(self) -> dict[str, str]:
        rules = self.policy.env
        env = {name: os.environ[name] for name in rules.keep if name in os.environ}
        env.update(PATH=_PATH, HOME=str(self.jail), TMPDIR=str(self.jail))
        env.update(rules.set)
        return env

    def _pids_max(self) -> int:
        concurrency = max(t.concurrency for t in self.tools.values())
        return 4 + concurrency * self.policy.limits.processes

    async def _read(self, process: asyncio.subprocess.Process, reader: FrameReader) -> None:
        assert process.stdout is not None
        try:
            while chunk := await process.stdout.read(1 << 16):
                for frame in reader.feed(chunk):
                    self._answer(frame)
        except ValueError as exc:
            self.log.error("sandbox launcher broke the protocol", error=str(exc))
        finally:
            await self._kill()
            lost = list(self._calls.items())
            self._calls.clear()
            for token, (future, _) in lost:
                if not future.done():
                    message = "the sandbox launcher died while running the call"
                    future.set_exception(
                        tool_error("TOOL_ERROR", message, details={"type": "Sandbox"})
                    )
                    self.log.warning("sandbox call lost", call=token)

    def _answer(self, frame: list[Any]) -> None:
        kind, token = frame[0], frame[1]
        entry = self._calls.get(token)
        if entry is None:
            return
        future, name = entry
        if kind == "progress":
            self.progress(token, frame[2])
        elif future.done():
            return
        elif kind == "result":
            future.set_result(frame[2])
        elif kind == "fail":
            _, _, code, message, details = frame
            error: ToolError = tool_error(code, message, tool=name, details=details)
            future.set_exception(error)

    async def close(self) -> None:
        """Stop the launcher (it kills its calls) and remove its cgroup."""
        process = self._process
        if process is None:
            return
        if process.stdin is not None and process.returncode is None:
            process.stdin.close()
        try:
            async with asyncio.timeout(2.0):
                await process.wait()
        except TimeoutError:
            await self._kill()
        if self._reader is not None:
            await asyncio.wait({self._reader}, timeout=1.0)
        self.host.leave_cgroup(self._cgroup)
        self._cgroup = None

    async def _kill(self) -> None:
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


async def _first_frame(stream: asyncio.StreamReader, reader: FrameReader) -> list[Any] | None:
    while chunk := await stream.read(1 << 16):
        for frame in reader.feed(chunk):
            return frame
    return None


def tool_origin(tool: Tool) -> str:
    """What the launcher imports to find ``tool``: its module's name when that imports
    the same file, else the file's path.

    Raises:
        SandboxError: the tool is defined where a new process cannot import it from.
    """
    module = sys.modules.get(tool.fn.__module__)
    path = getattr(module, "__file__", None)
    if module is None or path is None:
        raise SandboxError(f"{tool.name}: its module cannot be imported by a new process")
    name = tool.fn.__module__
    if "." in name:  # a package's module: loaded by name (a file loaded by path has no dot)
        return name
    if name != "__main__":  # a top-level module: by name if sys.path finds this same file
        with contextlib.suppress(ImportError, ValueError):
            spec = importlib.machinery.PathFinder.find_spec(name, sys.path)
            if spec is not None and spec.origin == path:
                return name
    return str(path)
