"""Tools that try to break out of their sandbox, for tests/tools/test_sandbox.py.

Each returns what happened (``ok`` or the errno name) rather than raising, so a test can
tell a refused attempt from a broken tool. Served with ``loom worker tests/workers/escape.py``.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loom import tool
from loom.tools.sandbox import Limits, NetRules, Sandbox

TIGHT = Sandbox(
    limits=Limits(cpu_seconds=1, memory_mb=512, processes=8, wall_seconds=3, file_size_mb=1)
)
LOOPBACK = Sandbox(net=NetRules(mode="loopback", ports=(1,)))


def outcome(attempt: Callable[[], Any]) -> str:
    """``ok`` if ``attempt`` ran, else the errno name (``EACCES``...) it failed with."""
    try:
        attempt()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    return "ok"


@tool(name="escape.read", sandbox=TIGHT)
def read(path: str) -> str:
    """Read a file."""
    return outcome(lambda: Path(path).read_bytes())


@tool(name="escape.write", sandbox=TIGHT)
def write(path: str) -> str:
    """Write a file."""
    return outcome(lambda: Path(path).write_text("escaped"))


@tool(name="escape.tcp", sandbox=TIGHT)
def tcp(port: int) -> str:
    """Connect to a TCP port on loopback."""
    return outcome(lambda: socket.create_connection(("127.0.0.1", port), timeout=2).close())


@tool(name="escape.tcp_loopback", sandbox=LOOPBACK)
def tcp_loopback(port: int) -> str:
    """Connect to a TCP port on loopback, with sockets allowed but only port 1."""
    return outcome(lambda: socket.create_connection(("127.0.0.1", port), timeout=2).close())


@tool(name="escape.unix", sandbox=TIGHT)
def unix(path: str) -> str:
    """Connect to a UNIX socket."""

    def attempt() -> None:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(path)

    return outcome(attempt)


@tool(name="escape.fork_bomb", sandbox=TIGHT)
def fork_bomb() -> dict[str, Any]:
    """Fork until refused; the children wait to be killed with the call."""
    started = 0
    while started < 1000:
        try:
            pid = os.fork()
        except OSError as exc:
            return {"started": started, "error": errno.errorcode.get(exc.errno or 0, "?")}
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        started += 1
    return {"started": started, "error": None}


@tool(name="escape.memory", sandbox=TIGHT)
def memory() -> int:
    """Allocate 64 MiB blocks without end."""
    blocks = []
    while True:
        blocks.append(bytearray(64 << 20))


@tool(name="escape.spin", sandbox=TIGHT)
def spin() -> int:
    """Burn CPU without end."""
    n = 0
    while True:
        n += 1


@tool(name="escape.hang", sandbox=TIGHT)
def hang() -> None:
    """Sleep without end (no CPU: only the wall-clock limit stops it)."""
    while True:
        time.sleep(1)


@tool(name="escape.big_file", sandbox=TIGHT)
def big_file() -> str:
    """Write 2 MiB into the jail (the limit is 1 MiB)."""
    return outcome(lambda: Path("big").write_bytes(b"x" * (2 << 20)))


@tool(name="escape.signal", sandbox=TIGHT)
def kill(pids: list[int]) -> dict[str, str]:
    """SIGKILL the given processes, the launcher (the parent) and everyone (-1)."""
    targets = [*pids, os.getppid(), -1]
    return {str(pid): outcome(lambda pid=pid: os.kill(pid, signal.SIGKILL)) for pid in targets}


@tool(name="escape.secret", sandbox=TIGHT)
def secret(name: str, worker_pid: int) -> dict[str, str]:
    """Look for an environment variable here, in the parent and in the worker."""
    found = {"here": os.environ.get(name, "absent")}
    for who, pid in (("launcher", os.getppid()), ("worker", worker_pid)):
        found[who] = outcome(lambda pid=pid: Path(f"/proc/{pid}/environ").read_bytes())
    return found


@tool(name="escape.whoami", sandbox=TIGHT)
def whoami() -> dict[str, Any]:
    """Where the call runs: pid, uid, working directory, environment."""
    return {"pid": os.getpid(), "uid": os.getuid(), "cwd": os.getcwd(), "env": dict(os.environ)}
