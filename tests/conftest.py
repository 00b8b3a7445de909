"""Shared fixtures: real brokers and actors in subprocesses on loopback TCP or ipc://."""

from __future__ import annotations

import asyncio
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import msgspec
import pytest

from loom.protocol import STATS, VERSION, Envelope, encode_header
from loom.session import ask
from loom.tools._tool import ToolContext
from loom.tools.builtin import _paths
from loom.tools.sandbox._policy import Sandbox

HERE = Path(__file__).parent
ROOT = HERE.parent
ACTORS = HERE / "actors"
SAMPLE_TOOLS = str(HERE / "workers" / "sample.py")
LOOM = [sys.executable, "-m", "loom.cli.main"]
"""The ``loom`` command, run from this interpreter."""
SCRATCH = Path(tempfile.mkdtemp(prefix="loom-tests-", dir="/tmp"))
"""This session's TMPDIR, its child processes' too: what a killed process leaves there (a
SIGKILLed agent's workspace, a jail) goes when the session ends."""
os.environ["TMPDIR"] = str(SCRATCH)
tempfile.tempdir = None  # read TMPDIR again
os.environ["LOOM_HOME"] = str(SCRATCH / "home")
"""Every broker and peer of the session shares this Loom home (its keys, its audit log),
as one user's processes do: never the real one's."""
for _name in ("LOOM_KEY", "LOOM_BROKER_KEY"):
    os.environ.pop(_name, None)
HEARTBEAT = 0.2
"""Seconds, for the ``mesh`` broker; a peer is dead after 3 missed heartbeats (0.6 s)."""


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {condition}")
        time.sleep(interval)


def run_loom(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``loom ARGS...`` to completion, its output captured as text."""
    return subprocess.run(
        [*LOOM, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def loom_at(broker: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``loom ARGS... --broker BROKER`` to completion."""
    return run_loom(*args, "--broker", broker)


def free_tcp_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


class Proc:
    """A child process whose output lines are collected by a reader thread."""

    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.args = args
        self.popen = subprocess.Popen(
            args,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, needle: str, timeout: float = 10.0) -> str:
        """Wait for an output line containing ``needle``."""

        def found() -> str | None:
            exited = self.popen.poll() is not None
            if exited:
                self._reader.join(5)  # read all it wrote before judging
            for line in self.lines:
                if needle in line:
                    return line
            if exited:
                raise AssertionError(f"{self.args} exited {self.popen.returncode}: {self.output}")
            return None

        return str(wait_for(found, timeout))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal the process and wait for it; kill it if it does not exit in time."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
                raise AssertionError(f"{self.args} ignored signal {sig}: {self.output}") from None
        self._close()
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()
        self._close()

    def _close(self) -> None:
        self._reader.join(5)
        if self.popen.stdout is not None and not self._reader.is_alive():
            self.popen.stdout.close()


@pytest.fixture
def spawn() -> Iterator[Callable[..., Proc]]:
    """Start child processes; every one still alive at teardown is killed."""
    procs: list[Proc] = []

    def start(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Proc:
        proc = Proc(list(args), env, cwd)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()


def pytest_sessionfinish() -> None:
    shutil.rmtree(SCRATCH, ignore_errors=True)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temp dir: ipc:// paths must stay under ~100 bytes."""
    path = Path(tempfile.mkdtemp(prefix="loom-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["tcp", "ipc"])
def endpoint(request: pytest.FixtureRequest, short_tmp: Path) -> str:
    """A broker control endpoint on loopback TCP, then on ipc://."""
    if request.param == "tcp":
        return free_tcp_endpoint()
    return f"ipc://{short_tmp}/broker"


class BrokerProc(Proc):
    endpoint: str


def start_broker(spawn: Callable[..., Proc], endpoint: str, *extra: str) -> Proc:
    proc = spawn(sys.executable, "-m", "loom.cli.broker", "--endpoint", endpoint, *extra)
    proc.wait_line("broker ready")
    return proc


@pytest.fixture
def broker(spawn: Callable[..., Proc], endpoint: str) -> Iterator[str]:
    """A running ``loom-broker``; yields its endpoint and checks it exits 0 at the end."""
    proc = start_broker(spawn, endpoint)
    yield endpoint
    assert proc.stop() == 0, proc.output


@pytest.fixture
def mesh(spawn: Callable[..., Proc], endpoint: str) -> Iterator[str]:
    """A broker with a fast heartbeat (``HEARTBEAT``); yields its endpoint, checks it
    exits 0."""
    proc = start_broker(spawn, endpoint, "--heartbeat", str(HEARTBEAT))
    yield endpoint
    assert proc.stop() == 0, proc.output


def start_worker(
    spawn: Callable[..., Proc], broker: str, name: str, *extra: str, target: str = SAMPLE_TOOLS
) -> Proc:
    """``loom worker TARGET`` as a child process, once it says it is ready."""
    command = [sys.executable, "-m", "loom.cli.main", "worker", target, "--broker", broker]
    proc = spawn(*command, "--name", name, *extra)
    proc.wait_line("worker ready")
    return proc


def spawn_actor(spawn: Callable[..., Proc], script: str, endpoint: str, *args: str) -> Proc:
    """Run ``tests/actors/<script>.py ENDPOINT ARGS...`` and wait for it to start."""
    proc = spawn(sys.executable, str(ACTORS / f"{script}.py"), endpoint, *args)
    proc.wait_line("actor started")
    return proc


def broker_stats(endpoint: str) -> dict[str, Any]:
    """Ask the broker for its counters (STATS on the control socket)."""
    return asyncio.run(ask(endpoint, STATS))


async def until(condition: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Await ``condition`` becoming truthy, with a deadline (for async test bodies)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {condition}")
        await asyncio.sleep(0.005)
    return value


async def eventually(probe: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
    """Await ``probe()`` until it returns something truthy, with a deadline (for
    conditions that need a round trip, such as asking the broker's directory)."""
    deadline = time.monotonic() + timeout
    while not (value := await probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {probe}")
        await asyncio.sleep(0.01)
    return value


def asking(mesh: str, body: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run ``body`` with a started actor called ``asker`` on ``mesh``; its result."""
    from loom import Actor

    async def go() -> Any:
        actor = Actor(name="asker", broker=mesh)
        await actor.start()
        try:
            return await body(actor)
        finally:
            await actor.stop()

    return asyncio.run(go())


def make_header(**changes: Any) -> bytes:
    """A valid header frame from a raw peer, with fields overridden by ``changes``."""
    env = Envelope(
        VERSION,
        0,
        b"\x00" * 16,
        "raw",
        time.time(),
        None,
        None,
        None,
        None,
        0,
        b"\x00" * 16,
        None,
        None,
    )
    return encode_header(msgspec.structs.replace(env, **changes))


_WRONG = ({"a": 1}, [1, 2], b"\x00bytes", "text", 1.5, -1, True, "x" * 300, b"y" * 100)
"""Values of the wrong msgpack type, or past a bound, for some header field each."""


def ill_typed_headers() -> list[bytes]:
    """Header frames with one field of a type (or size) that field refuses: a map as
    ``kind``, a list as ``id``, bytes as ``sender``, a 300-character thread id..."""
    good = msgspec.structs.astuple(msgspec.msgpack.decode(make_header(), type=Envelope))
    headers = []
    for index in range(len(good)):
        for value in _WRONG:
            fields = list(good)
            fields[index] = value
            frame = msgpack.packb(fields)
            try:
                msgspec.msgpack.decode(frame, type=Envelope)
            except msgspec.ValidationError:
                headers.append(frame)
    return headers


# --- built-in tools: a jail, a secret beside it, call contexts ------------------------

MakeContext = Callable[..., ToolContext]


@pytest.fixture
def jail(tmp_path: Path) -> Path:
    """An empty jail directory."""
    path = tmp_path / "jail"
    path.mkdir()
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the jail holding a file ``secret`` no tool may touch."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret").write_text("top secret\n")
    return path


@pytest.fixture
def context(jail: Path) -> MakeContext:
    """Make a call context for a tool, jailed in ``jail`` unless told otherwise."""

    def make(tool: str, *, jail: Path | None = jail, sandbox: Sandbox | None = None) -> ToolContext:
        return ToolContext(1, tool, 10.0, lambda call, data: None, sandbox=sandbox, jail=jail)

    return make


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with the kernel's openat2, then with the component walk alone."""
    if request.param == "walk":
        monkeypatch.setattr(_paths._openat2, "available", False)
    return str(request.param)
