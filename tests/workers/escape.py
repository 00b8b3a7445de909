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

from loom import ToolContext, tool
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
    """SIGKILL the given processes, the parent (when one is visible: not in a PID
    namespace of its own, where ``getppid()`` is 0) and everyone (-1)."""
    targets = [*pids, *([os.getppid()] if os.getppid() else []), -1]
    return {str(pid): outcome(lambda pid=pid: os.kill(pid, signal.SIGKILL)) for pid in targets}


@tool(name="escape.secret", sandbox=TIGHT)
def secret(name: str, worker_pid: int) -> dict[str, str]:
    """Look for an environment variable here, in the parent and in the worker."""
    found = {"here": os.environ.get(name, "absent"), "launcher": "hidden"}
    parent = os.getppid()  # 0 in a PID namespace of its own
    for who, pid in (("launcher", parent), ("worker", worker_pid)):
        if pid:
            found[who] = outcome(lambda pid=pid: Path(f"/proc/{pid}/environ").read_bytes())
    return found


@tool(name="escape.whoami", sandbox=TIGHT)
def whoami(context: ToolContext) -> dict[str, Any]:
    """Where the call runs: pid, parent, uid, working directory, environment; and who
    called (the broker's word, carried into the sandbox)."""
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "uid": os.getuid(),
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "caller": context.caller,
    }


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


def _syscall(number: int, *args: int) -> str:
    """A raw system call: ``ok`` or the errno name."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(number, *(ctypes.c_long(a) for a in args)) >= 0:
        return "ok"
    return errno.errorcode.get(ctypes.get_errno(), "?")


@tool(name="escape.dgram_pair", sandbox=TIGHT)
def dgram_pair(path: str) -> str:
    """Reach a datagram socket file through a socketpair: no socket() call needed."""

    def attempt() -> None:
        one, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        with one, other:
            one.sendto(b"escaped", path)

    return outcome(attempt)


@tool(name="escape.meddle", sandbox=TIGHT)
def meddle(pid: int) -> dict[str, str]:
    """Lower another process's limits and priorities (``pid``, and the parent when one
    is visible), and every process of a user (a uid with none, 4242)."""
    import resource

    results: dict[str, str] = {}
    targets = {"victim": pid}
    if os.getppid():  # 0 in a PID namespace of its own: no parent to address
        targets["parent"] = os.getppid()
    for who, target in targets.items():
        results[f"{who} prlimit get"] = outcome(
            lambda target=target: resource.prlimit(target, resource.RLIMIT_NOFILE)
        )
    results["victim prlimit set"] = outcome(
        lambda: resource.prlimit(pid, resource.RLIMIT_NOFILE, (64, 64))
    )
    results["victim setpriority"] = outcome(lambda: os.setpriority(os.PRIO_PROCESS, pid, 19))
    results["victim sched_setaffinity"] = outcome(lambda: os.sched_setaffinity(pid, {0}))
    results["victim sched_setscheduler"] = outcome(
        lambda: os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    )
    results["victim ioprio_set"] = _syscall(251, 1, pid, 3 << 13)  # WHO_PROCESS, class idle
    results["user setpriority"] = outcome(lambda: os.setpriority(os.PRIO_USER, 4242, 19))
    results["user ioprio_set"] = _syscall(251, 3, 4242, 3 << 13)  # IOPRIO_WHO_USER
    results["self setpriority"] = outcome(lambda: os.setpriority(os.PRIO_PROCESS, 0, 5))
    results["self setrlimit"] = outcome(
        lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100))
    )
    return results


@tool(name="escape.mptcp", sandbox=LOOPBACK)
def mptcp(port: int) -> str:
    """Connect with MPTCP (protocol 262), which Landlock's TCP port rules do not see."""

    def attempt() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262) as sock:
            sock.settimeout(2)
            sock.connect(("127.0.0.1", port))

    return outcome(attempt)


@tool(name="escape.listen", sandbox=LOOPBACK)
def listen() -> str:
    """listen() on an unbound TCP socket: the kernel binds a port for it."""

    def attempt() -> None:
        with socket.socket() as sock:
            sock.listen()

    return outcome(attempt)


@tool(name="escape.clone_parent", sandbox=TIGHT)
def clone_parent(count: int) -> list[str]:
    """Make children of the parent (``clone(CLONE_PARENT)``) that exit at once: zombies
    of whoever forked this call, unless someone reaps them."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    results = []
    for _ in range(count):
        pid = libc.syscall(56, ctypes.c_long(0x8000 | signal.SIGCHLD), 0, 0, 0, 0)
        if pid == 0:
            os._exit(0)
        results.append("ok" if pid > 0 else errno.errorcode.get(ctypes.get_errno(), "?"))
    return results


@tool(name="escape.orphans", sandbox=TIGHT)
def orphans(count: int) -> str:
    """Leave ``count`` children that outlive the call process's own child: orphans."""
    child = os.fork()
    if child == 0:
        for _ in range(count):
            if os.fork() == 0:
                os._exit(0)
        os._exit(0)
    os.waitpid(child, 0)
    return "ok"


def _shmget(key: int, size: int, flags: int) -> str:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.shmget(key, ctypes.c_size_t(size), flags) >= 0:
        return "ok"
    return errno.errorcode.get(ctypes.get_errno(), "?")


@tool(name="escape.shm_create", sandbox=TIGHT)
def shm_create(key: int) -> str:
    """Create a System V shared memory segment of 1 MiB that no one removes."""
    return _shmget(key, 1 << 20, 0o1000 | 0o600)  # IPC_CREAT


@tool(name="escape.shm_find", sandbox=TIGHT)
def shm_find(key: int) -> str:
    """Find a segment an earlier call left."""
    return _shmget(key, 0, 0)


@tool(name="escape.stderr", sandbox=TIGHT)
def stderr() -> dict[str, str]:
    """What standard error is, and whether it can be rewritten from the start."""
    import fcntl
    import stat

    mode = os.fstat(2).st_mode
    kind = "pipe" if stat.S_ISFIFO(mode) else "file" if stat.S_ISREG(mode) else "other"
    flags = fcntl.fcntl(2, fcntl.F_GETFL)
    return {
        "kind": kind,
        "clear append": outcome(lambda: fcntl.fcntl(2, fcntl.F_SETFL, flags & ~os.O_APPEND)),
        "truncate": outcome(lambda: os.ftruncate(2, 0)),
    }


@tool(name="escape.shout", sandbox=TIGHT)
def shout(lines: int, width: int = 60) -> str:
    """Print ``lines`` numbered lines of about ``width`` bytes to standard error."""
    import sys

    for number in range(lines):
        sys.stderr.write(f"shout {number} " + "x" * width + "\n")
    sys.stderr.flush()
    return "ok"


@tool(name="escape.chatter", sandbox=TIGHT)
def chatter(word: str) -> str:
    """print() a line (buffered, never flushed here), a control sequence, and a last
    line without a newline on standard error."""
    import sys

    print(f"printed {word}")
    print(f"colour \x1b[31m{word}\x1b[0m")
    sys.stderr.write(f"unterminated {word}")
    return "ok"
