"""Tools that try to break out of their sandbox, for tests/tools/test_sandbox.py.

Each returns what happened (``ok`` or the errno name) rather than raising, so a test can
tell a refused attempt from a broken tool. Served with ``loom worker tests/workers/escape.py``.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loom import tool
from loom.tools.sandbox import Limits, NetRules, Sandbox

TIGHT = Sandbox(
    limits=Limits(cpu_seconds=1, memory_mb=512, processes=8, wall_seconds=3, file_size_mb=1)
)
LOOPBACK = Sandbox(net=NetRules(mode="loopback", ports=(1,)))
SPIN = Sandbox(limits=Limits(cpu_seconds=1, wall_seconds=30))
"""CPU-bound: a wall-clock limit far off, so a starved machine still ends it by CPU."""
HANG = Sandbox(limits=Limits(cpu_seconds=10, wall_seconds=2))
MEMORY = Sandbox(limits=Limits(cpu_seconds=20, memory_mb=512, wall_seconds=30))
"""Filling 512 MiB takes CPU time; on a busy machine more than TIGHT's second."""


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
        if pid == 0:  # wait for the kill that ends the call (SIGKILL to the group)
            signal.pause()
            os._exit(0)
        started += 1
    return {"started": started, "error": None}


@tool(name="escape.memory", sandbox=MEMORY)
def memory() -> int:
    """Allocate 64 MiB blocks without end."""
    blocks = []
    while True:
        blocks.append(bytearray(64 << 20))


@tool(name="escape.spin", sandbox=SPIN)
def spin() -> int:
    """Burn CPU without end."""
    n = 0
    while True:
        n += 1


@tool(name="escape.hang", sandbox=HANG)
def hang() -> None:
    """Wait without end for a signal (no CPU: only the wall-clock limit's kill ends it)."""
    while True:
        signal.pause()


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


@tool(name="escape.raw_socket", sandbox=TIGHT)
def raw_socket() -> str:
    """socket(AF_UNIX) by raw syscall, the family with high bits set: the kernel reads
    an int, a filter comparing 64 bits would miss it."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(41, ctypes.c_long((1 << 32) | socket.AF_UNIX), socket.SOCK_STREAM, 0)
    if fd >= 0:
        os.close(fd)
        return "ok"
    return errno.errorcode.get(ctypes.get_errno(), "?")


@tool(name="escape.clone_namespace", sandbox=TIGHT)
def clone_namespace() -> str:
    """clone() into a new user namespace (a way around a filter on unshare alone)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    pid = libc.syscall(56, 0x10000000 | signal.SIGCHLD, 0, 0, 0, 0)
    if pid == 0:
        os._exit(0)
    if pid > 0:
        os.waitpid(pid, 0)
        return "ok"
    return errno.errorcode.get(ctypes.get_errno(), "?")


@tool(name="escape.sigio", sandbox=TIGHT)
def sigio() -> str:
    """Make the kernel send SIGKILL to the launcher on I/O (F_SETOWN + F_SETSIG)."""
    import fcntl

    read, _ = os.pipe()
    owner = outcome(lambda: fcntl.fcntl(read, fcntl.F_SETOWN, os.getppid()))
    how = outcome(lambda: fcntl.fcntl(read, 10, signal.SIGKILL))  # F_SETSIG
    return f"{owner} {how}"


@tool(name="escape.plant", sandbox=TIGHT)
def plant(marker: str) -> str:
    """Write modules into the jail that, imported, would write ``marker`` outside."""
    payload = f"open({marker!r}, 'w').write('planted')\n"
    Path("loom").mkdir(exist_ok=True)
    Path("loom/__init__.py").write_text(payload)
    for name in ("heapq", "selectors", "msgpack", "pydantic"):
        Path(f"{name}.py").write_text(payload)
    return "planted"


def _answer_pipe() -> int:
    """The call process's answer descriptor, found the way a hostile tool would."""
    import sys

    frame = sys._getframe()
    while frame is not None:
        if frame.f_code.co_name == "call_main":
            return int(frame.f_locals["answers"])
        frame = frame.f_back  # type: ignore[assignment]
    raise LookupError("call_main not on the stack")


@tool(name="escape.forge", sandbox=TIGHT)
def forge(how: str) -> str:
    """Write a forged or broken frame on the answer pipe, then answer normally."""
    from loom.protocol._pipe import pack_frame

    pipe = _answer_pipe()
    if how == "short":
        os.write(pipe, pack_frame("result"))
    elif how == "huge":  # a bin32 header for 256 MiB, then more than the 64 MiB allowed
        os.write(pipe, b"\xc6\x10\x00\x00\x00")
        chunk = b"x" * (1 << 20)
        for _ in range(70):
            os.write(pipe, chunk)
    else:
        os.write(pipe, pack_frame("progress", {"not": "bytes"}))
    return "normal answer"


@tool(name="escape.snoop", sandbox=TIGHT)
def snoop(backwards: str) -> list[str]:
    """Look through every frame and every tracked object for ``backwards`` reversed
    (another call's argument; passed reversed so this call's own arguments differ)."""
    import gc
    import sys

    needle = backwards[::-1]
    found = []
    frame = sys._getframe().f_back
    while frame is not None:
        if needle in repr(frame.f_locals):
            found.append(f"frame {frame.f_code.co_name}")
        frame = frame.f_back  # type: ignore[assignment]
    for item in gc.get_objects():
        if isinstance(item, dict | list | tuple) and needle in repr(item)[:100000]:
            found.append(type(item).__name__)
            if len(found) > 5:
                break
    return found
