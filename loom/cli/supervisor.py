"""``Supervisor``: run the mesh's processes as children, restart the ones that crash.

Erlang's one-for-one strategy with a restart intensity: a child that exits is started
again after a backoff (doubling per recent restart); a child restarted more than
``max_restarts`` times within ``within`` seconds is given up on, and then the whole
supervisor stops (in reverse start order) and reports failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import msgpack
import psutil
import zmq
import zmq.asyncio

from loom._tables import format_table
from loom.cli._parent import PARENT

__all__ = ["Child", "ChildSpec", "Supervisor", "format_status"]

Ready = Callable[["Child"], Awaitable[None]]
"""Waits until a started child is ready (a broker answering); raises if it never is."""


@dataclass(frozen=True)
class ChildSpec:
    """What to run, and how to treat its exits."""

    name: str
    kind: str
    """``broker``, ``worker`` or ``actor`` (for the status table)."""
    argv: list[str]
    restart: str = "always"
    """``always``, ``on-failure`` (not after exit code 0) or ``never``."""
    grace: float = 10.0
    env: dict[str, str] = field(default_factory=dict)
    ready: Ready | None = None


class Child:
    """A child's live state."""

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.restart_asked = False
        """``loom restart`` asked for it: the next exit restarts it at once, uncounted."""
        self.state = "waiting"
        """waiting, running, restarting, backoff, exited, failed, stopping, stopped"""
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.recent: deque[float] = deque()
        """When it was restarted, within the intensity window."""
        self._ps: psutil.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.state == "running" else None

    def usage(self) -> tuple[float, float]:
        """CPU percent since the last call, and RSS in MiB (zeros when not running)."""
        pid = self.pid
        if pid is None:
            return 0.0, 0.0
        try:
            if self._ps is None or self._ps.pid != pid:
                self._ps = psutil.Process(pid)
                self._ps.cpu_percent()
            return self._ps.cpu_percent(), self._ps.memory_info().rss / 2**20
        except psutil.Error:
            return 0.0, 0.0


class Supervisor:
    """Starts children in order, keeps them running, stops them in reverse order.

    Args:
        specs: the children, in start order (the broker first).
        log: a structlog logger.
        max_restarts: restarts allowed within ``within`` seconds before giving up.
        within: the intensity window, seconds.
        backoff: seconds before a first restart; doubled per restart in the window.
        max_backoff: the longest backoff.
        status_every: seconds between status tables (0: only on changes).
        out: where status tables go.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        specs: list[ChildSpec],
        *,
        log: Any,
        max_restarts: int = 5,
        within: float = 60.0,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        status_every: float = 10.0,
        out: TextIO = sys.stdout,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.children = [Child(spec) for spec in specs]
        self._log = log
        self._max_restarts = max_restarts
        self._within = within
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._status_every = status_every
        self._out = out
        self._clock = clock
        self._stopping = asyncio.Event()
        self._restarting: set[asyncio.Task[None]] = set()
        self.gave_up: Child | None = None

    def stop(self) -> None:
        """Ask ``run()`` to stop the children and return (safe from a signal handler)."""
        self._stopping.set()

    async def run(self) -> int:
        """Start every child, supervise until ``stop()`` or a give-up, stop them all.

        Returns:
            0, or 1 when a child was given up on (or never became ready).
        """
        keepers: list[asyncio.Task[None]] = []
        status = asyncio.create_task(self._status_loop())
        try:
            for child in self.children:
                if self._stopping.is_set():
                    break
                started = asyncio.get_running_loop().create_future()
                keepers.append(asyncio.create_task(self._keep(child, started)))
                stopping = asyncio.ensure_future(self._stopping.wait())
                await asyncio.wait({started, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()  # in order: the next one starts once this one is ready
            await self._stopping.wait()
        finally:
            self._stopping.set()
            for child in reversed(self.children):
                await self._terminate(child)
            for task in keepers:
                task.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
            status.cancel()
            self.print_status()
        return 1 if self.gave_up is not None else 0

    async def _keep(self, child: Child, started: asyncio.Future[None]) -> None:
        spec = child.spec
        while not self._stopping.is_set():
            try:
                env = {**os.environ, **spec.env, PARENT: str(os.getpid())}  # _parent.py
                child.proc = await asyncio.create_subprocess_exec(
                    *spec.argv, env=env, start_new_session=True
                )
            except (OSError, ValueError) as exc:  # cannot spawn: as good as a crash
                self._log.error("cannot start child", child=spec.name, error=str(exc))
                if not started.done():
                    started.set_result(None)
                if not await self._restart_or_give_up(child):
                    return
                continue
            if self._stopping.is_set():  # stopped while it was being spawned
                await self._terminate(child)
                return
            child.state = "running"
            self._log.info("child started", child=spec.name, pid=child.proc.pid)
            if not started.done():
                await self._wait_ready(child, started)
            else:  # a restart
                self.print_status()
            code = await child.proc.wait()
            if self._stopping.is_set():
                return
            if child.restart_asked:  # loom restart: at once, not counted against it
                child.restart_asked = False
                child.restarts += 1
                self._log.info("child restarted on request", child=spec.name)
                continue
            self._log.warning("child exited", child=spec.name, code=code)
            if spec.restart == "never" or (spec.restart == "on-failure" and code == 0):
                child.state = "exited"
                self.print_status()
                return
            if not await self._restart_or_give_up(child):
                return

    async def _restart_or_give_up(self, child: Child) -> bool:
        """Count a restart in the window; give up past the intensity, else back off.
        Returns whether to start the child again."""
        now = self._clock()
        child.recent.append(now)
        while child.recent and child.recent[0] < now - self._within:
            child.recent.popleft()
        if len(child.recent) > self._max_restarts:
            self._give_up(child, f"{len(child.recent)} restarts within {self._within:g}s")
            return False
        delay = min(self._backoff * 2 ** (len(child.recent) - 1), self._max_backoff)
        child.state = "backoff"
        self.print_status()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)
        child.restarts += 1
        return not self._stopping.is_set()

    async def _wait_ready(self, child: Child, started: asyncio.Future[None]) -> None:
        try:
            if child.spec.ready is not None:
                await child.spec.ready(child)
        except Exception as exc:
            self._give_up(child, f"never became ready: {exc}")
        started.set_result(None)
        self.print_status()

    def _give_up(self, child: Child, why: str) -> None:
        child.state = "failed"
        self.gave_up = self.gave_up or child
        self._log.error("giving up on a child: stopping everything", child=child.spec.name, why=why)
        self._stopping.set()

    async def _terminate(self, child: Child) -> None:
        """SIGTERM, the grace period, then SIGKILL to its process group."""
        proc = child.proc
        if proc is None or proc.returncode is not None:
            if child.state in ("running", "restarting", "backoff", "waiting"):
                child.state = "stopped"
            return
        child.state = "stopping"
        await self._end(child, proc)
        with contextlib.suppress(ProcessLookupError):  # its own children, if any are left
            os.killpg(proc.pid, signal.SIGKILL)
        child.state = "failed" if child is self.gave_up else "stopped"

    async def _status_loop(self) -> None:
        if not self._status_every:
            return
        while True:
            await asyncio.sleep(self._status_every)
            self.print_status()

    def status(self) -> list[dict[str, Any]]:
        """Each child's name, kind, state, pid, restarts, CPU percent and RSS in MiB."""
        rows = []
        for child in self.children:
            cpu, rss = child.usage()
            rows.append(
                {
                    "name": child.spec.name,
                    "kind": child.spec.kind,
                    "state": child.state,
                    "pid": child.pid,
                    "restarts": child.restarts,
                    "cpu": round(cpu, 1),
                    "rss_mib": round(rss, 1),
                }
            )
        return rows

    def print_status(self) -> None:
        """The status as one table (``loom run`` prints it, ``loom ps`` shows it)."""
        self._out.write(format_status(self.status()) + "\n")
        self._out.flush()

    def restart(self, name: str) -> str | None:
        """Restart child ``name`` now (SIGTERM, then it starts again at once); an error
        message if there is no such running child."""
        child = next((c for c in self.children if c.spec.name == name), None)
        if child is None:
            names = ", ".join(c.spec.name for c in self.children)
            return f"no child named {name!r} (children: {names})"
        if child.state != "running" or child.proc is None:
            return f"{name} is {child.state}, not running"
        child.restart_asked = True
        child.state = "restarting"
        task = asyncio.create_task(self._end(child, child.proc))
        self._restarting.add(task)
        task.add_done_callback(self._restarting.discard)
        return None

    async def _end(self, child: Child, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM, the grace period, then SIGKILL to its process group; returns once
        it exited (a restarting child's own loop then starts it again)."""
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), child.spec.grace)
        except TimeoutError:
            self._log.warning("child ignored SIGTERM: killing it", child=child.spec.name)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def serve(self, endpoint: str, *, file: str = "") -> None:
        """Answer ``loom ps`` and ``loom restart`` on ``endpoint`` (a REP socket) until
        cancelled: ``{"command": "ps"}`` and ``{"command": "restart", "name": N}``."""
        context = zmq.asyncio.Context()
        sock = context.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, 64 * 1024)
        sock.bind(endpoint)
        try:
            while True:
                frames = await sock.recv_multipart()
                try:
                    request = msgpack.unpackb(frames[-1])
                    command = request.get("command") if isinstance(request, dict) else None
                except Exception:
                    command, request = None, {}
                if command == "ps":
                    answer: dict[str, Any] = {"file": file, "children": self.status()}
                elif command == "restart":
                    error = self.restart(str(request.get("name")))
                    answer = {"error": error} if error else {"ok": True}
                else:
                    answer = {"error": "ask ps or restart"}
                await sock.send(msgpack.packb(answer))
        finally:
            sock.close(0)
            context.term()


def format_status(rows: list[dict[str, Any]]) -> str:
    """The children as a table: name, kind, state, pid, restarts, CPU and RSS."""
    header = ("CHILD", "KIND", "STATE", "PID", "RESTARTS", "CPU%", "RSS MiB")
    cells = [
        (
            row["name"],
            row["kind"],
            row["state"],
            str(row["pid"]) if row["pid"] is not None else "-",
            str(row["restarts"]),
            f"{row['cpu']:.1f}",
            f"{row['rss_mib']:.1f}",
        )
        for row in rows
    ]
    return format_table(header, cells)
