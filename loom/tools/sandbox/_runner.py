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

from loom.errors import SandboxUnavailableError, ToolError, tool_error
from loom.logs import get_logger
from loom.protocol import FrameReader, pack_frame
from loom.tools._tool import Tool, ToolContext
from loom.tools.sandbox._host import HostLayers
from loom.tools.sandbox._policy import Sandbox

__all__ = ["SandboxRunner", "SandboxUnavailableError", "tool_origin"]

_PATH = "/usr/local/bin:/usr/bin:/bin"
_CONTROLS = {code: f"\\x{code:02x}" for code in (*range(32), 127) if code != ord("\t")}
"""Control characters of a call's output, shown escaped in the worker's log."""


class _Launch:
    """One launcher process and the calls it runs (a new one after it dies)."""

    __slots__ = ("calls", "cgroup", "process", "reader")

    def __init__(self, process: asyncio.subprocess.Process, cgroup: Path | None) -> None:
        self.process = process
        self.cgroup = cgroup
        self.calls: dict[int, tuple[asyncio.Future[bytes], int, str]] = {}
        """Our call number -> (its future, the broker's token, the tool)."""
        self.reader: asyncio.Task[None] | None = None

    def send(self, *items: Any) -> None:
        stdin = self.process.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.write(pack_frame(*items))


class SandboxRunner:
    """One launcher process serving the tools that share a policy and a jail.

    Args:
        tools: the tools it loads (each must be importable by module or file).
        policy: their sandbox policy.
        jail: the working directory (created if missing).
        host: what the host supports, from :func:`loom.tools.sandbox._host.probe_host`.
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
        self.output_log = get_logger("loom.sandbox.output")
        """What calls print: one line per record, with the tool and the call's token."""
        self._launch: _Launch | None = None
        self._starting: asyncio.Future[_Launch] | None = None
        self._numbers = 0
        """Our own call numbers: the broker's tokens start again when it restarts."""
        self._closed = False

    async def call(self, token: int, tool: Tool, args: Any, context: ToolContext) -> bytes:
        """Run one call in the sandbox; the encoded result.

        Raises:
            ToolError: the tool failed (``TOOL_ERROR``), hit a limit (``LIMIT_EXCEEDED``),
                was cancelled, or its result is too large.
            SandboxUnavailableError: the launcher could not be started.
            asyncio.CancelledError: the awaiting task was cancelled (the call is killed).
        """
        launch = await self._running()
        self._numbers += 1
        number = self._numbers
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        launch.calls[number] = (future, token, tool.name)
        launch.send("call", number, tool.name, args, context.timeout, context.caller or "")
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if number in launch.calls:  # kill its process group
                launch.send("cancel", number)
            raise
        finally:
            launch.calls.pop(number, None)

    async def start(self) -> dict[str, str]:
        """Start the launcher now (else the first call does); the layers it applied.

        Raises:
            SandboxUnavailableError: it failed to start, load the tools, or confine itself.
        """
        await self._running()
        return self.report

    async def _running(self) -> _Launch:
        launch = self._launch
        if launch is not None and launch.process.returncode is None:
            return launch
        if self._closed:
            raise SandboxUnavailableError("the sandbox is closed")
        if self._starting is None or self._starting.done():
            self._starting = asyncio.ensure_future(self._spawn())
        return await asyncio.shield(self._starting)

    async def _spawn(self) -> _Launch:
        # -I: neither the working directory (the jail, which tools write) nor PYTHON*
        # variables nor the user's site directory reach sys.path
        command = [sys.executable, "-I", "-m", "loom.tools.sandbox._launcher"]
        try:
            self.jail.mkdir(parents=True, exist_ok=True)
            if self.host.bwrap:
                command = self.host.bwrap_command(self.policy, self.jail) + command
            cgroup = self.host.make_cgroup(self._pids_max())
            process = await asyncio.create_subprocess_exec(
                *self.host.enter_command(cgroup, command),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd=self.jail,
                env=self._environment(),
                start_new_session=True,
            )
        except OSError as exc:
            raise SandboxUnavailableError(f"cannot start the sandbox launcher: {exc}") from exc
        launch = _Launch(process, cgroup)
        init = {
            "sys_path": _import_path(self.jail),
            "origins": sorted({tool_origin(t) for t in self.tools.values()}),
            "tools": sorted(self.tools),
            "policy": self.policy.model_dump(mode="json"),
            "jail": str(self.jail),
            "max_payload": self.max_payload,
            "protect": [os.getpid(), -os.getpgrp(), process.pid, -process.pid],
        }
        launch.send("init", init)
        reader = FrameReader()
        assert process.stdout is not None
        try:
            async with asyncio.timeout(self.start_timeout):
                frame = await _first_frame(process.stdout, reader)
        except TimeoutError:
            frame = None
        if frame is None or frame[0] != "ready":
            await self._end(launch)
            why = "did not start in time" if frame is None else "exited while starting"
            raise SandboxUnavailableError(f"the sandbox launcher {why} (see its log)")
        self.report = {**frame[1], **self.host.outside_report(cgroup)}
        self.log.info("sandbox ready", pid=process.pid, **self.report)
        launch.reader = asyncio.ensure_future(self._read(launch, reader))
        self._launch = launch
        return launch

    def _environment(self) -> dict[str, str]:
        rules = self.policy.env
        env = {name: os.environ[name] for name in rules.keep if name in os.environ}
        env.update(PATH=_PATH, HOME=str(self.jail), TMPDIR=str(self.jail))
        env.update(rules.set)
        return env

    def _pids_max(self) -> int:
        """Every call the tools may run at once, a spare, the launcher and its zygote
        (and bubblewrap's two)."""
        calls = sum(t.concurrency for t in self.tools.values())
        return 6 + (calls + 1) * self.policy.limits.processes

    async def _read(self, launch: _Launch, reader: FrameReader) -> None:
        stdout = launch.process.stdout
        assert stdout is not None
        try:
            while chunk := await stdout.read(1 << 16):
                for frame in reader.feed(chunk):
                    self._answer(launch, frame)
        except (ValueError, TypeError, IndexError) as exc:
            self.log.error("sandbox launcher broke the protocol", error=str(exc))
        finally:
            await self._end(launch)
            for number, (future, token, _) in list(launch.calls.items()):
                if not future.done():
                    message = "the sandbox launcher died while running the call"
                    error = tool_error("TOOL_ERROR", message, details={"type": "Sandbox"})
                    future.set_exception(error)
                    self.log.warning("sandbox call lost", call=token, number=number)

    def _answer(self, launch: _Launch, frame: list[Any]) -> None:
        kind, number = frame[0], frame[1]
        if kind == "output":
            self._output(launch, number, frame[2], frame[3])
            return
        entry = launch.calls.get(number)
        if entry is None:
            return
        future, token, name = entry
        if kind == "progress" and type(frame[2]) is bytes:
            self.progress(token, frame[2])
        elif future.done():
            return
        elif kind == "result" and type(frame[2]) is bytes:
            future.set_result(frame[2])
        elif kind == "fail":
            _, _, code, message, details = frame
            error: ToolError = tool_error(code, message, tool=name, details=details)
            future.set_exception(error)
        else:
            raise ValueError(f"unexpected frame {str(kind)[:20]!r}")

    def _output(self, launch: _Launch, number: int, tool: str, line: bytes) -> None:
        """Log a line a call printed (or a spare, ``number`` 0: a crash before its call)."""
        if type(tool) is not str or type(line) is not bytes:
            raise ValueError("an output frame of the wrong types")
        entry = launch.calls.get(number)
        text = line.decode(errors="replace").translate(_CONTROLS)  # no terminal escapes
        call = entry[1] if entry is not None else None
        self.output_log.info(text, tool=tool or None, call=call)

    async def close(self) -> None:
        """Stop the launcher (it kills its calls) and remove its cgroup."""
        self._closed = True
        launch = self._launch
        if launch is None:
            return
        stdin = launch.process.stdin
        if stdin is not None and launch.process.returncode is None:
            stdin.close()
        try:
            async with asyncio.timeout(2.0):
                await launch.process.wait()
        except TimeoutError:
            pass
        await self._end(launch)
        if launch.reader is not None:
            await asyncio.wait({launch.reader}, timeout=1.0)

    async def _end(self, launch: _Launch) -> None:
        """Kill this launcher's session (not a newer launcher's), remove its cgroup."""
        if launch.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(launch.process.pid, signal.SIGKILL)
            await launch.process.wait()
        for _ in range(100):  # its processes may take a moment to go
            if self.host.leave_cgroup(launch.cgroup):
                break
            await asyncio.sleep(0.01)


async def _first_frame(stream: asyncio.StreamReader, reader: FrameReader) -> list[Any] | None:
    while chunk := await stream.read(1 << 16):
        for frame in reader.feed(chunk):
            return frame
    return None


def tool_origin(tool: Tool) -> str:
    """What the launcher imports to find ``tool``: its module's name when that imports
    the same file, else the file's path.

    Raises:
        SandboxUnavailableError: the tool is defined where a new process cannot import it from.
    """
    module = sys.modules.get(tool.fn.__module__)
    path = getattr(module, "__file__", None)
    if module is None or path is None:
        raise SandboxUnavailableError(
            f"{tool.name}: its module cannot be imported by a new process"
        )
    name = tool.fn.__module__
    if "." in name:  # a package's module: loaded by name (a file loaded by path has no dot)
        return name
    if name != "__main__":  # a top-level module: by name if sys.path finds this same file
        with contextlib.suppress(ImportError, ValueError):
            spec = importlib.machinery.PathFinder.find_spec(name, sys.path)
            if spec is not None and spec.origin == path:
                return name
    return str(path)


def _import_path(jail: Path) -> list[str]:
    """The worker's ``sys.path`` for the launcher, less what a tool could write: the
    current directory (``""``), relative entries, and anything inside the jail."""
    kept = []
    for entry in sys.path:
        if not entry or not os.path.isabs(entry):
            continue
        if Path(entry).resolve().is_relative_to(jail.resolve()):
            continue
        kept.append(entry)
    return kept
