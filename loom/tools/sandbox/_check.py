"""``loom sandbox check``: which layers this host applies, and whether they hold.

A launcher is started with the default policy; its report lists each layer as applied or
unavailable (and why). Then :func:`probe_escapes` tries one escape of each known class
from inside (twice: the second call looks for what the first left), and
:func:`probe_network` the network escapes under a policy that allows sockets to one port;
each attempt says what stopped it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import resource
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loom.protocol import decode_value
from loom.tools._tool import Tool, ToolContext, tool
from loom.tools.sandbox import _kernel as kernel
from loom.tools.sandbox._host import probe_host
from loom.tools.sandbox._policy import NetRules, Sandbox
from loom.tools.sandbox._runner import SandboxRunner

__all__ = ["check_host", "probe_escapes", "probe_network"]

_IPC_CREAT = 0o1000
_IPPROTO_MPTCP = 262
_PORT_ALLOWED = 1
"""The one port :func:`probe_network`'s policy allows (nothing listens there)."""


def _outcomes(attempts: dict[str, Callable[[], Any]]) -> dict[str, str]:
    results: dict[str, str] = {}
    for name, attempt in attempts.items():
        try:
            attempt()
        except OSError as exc:
            code = errno.errorcode.get(exc.errno or 0, "?")
            results[name] = f"blocked ({code})"
        else:
            results[name] = "NOT BLOCKED"
    return results


def _dgram_pair(path: str) -> None:
    one, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with one, other:
        one.sendto(b"loom sandbox check", path)


def _clone_parent() -> None:
    flags = ctypes.c_long(kernel.CLONE_PARENT | signal.SIGCHLD)
    pid = kernel.libc.syscall(kernel.syscall_number("clone"), flags, 0, 0, 0, 0)
    if pid == 0:
        os._exit(0)
    kernel.check(pid)


def _earlier_shm(key: int) -> None:
    """Succeeds if an earlier call left a segment under ``key``; else leaves one."""
    if kernel.libc.shmget(key, ctypes.c_size_t(0), 0) >= 0:
        return
    code = ctypes.get_errno()
    kernel.libc.shmget(key, ctypes.c_size_t(4096), _IPC_CREAT | 0o600)
    raise OSError(code, os.strerror(code))


@tool(name="loom.sandbox.probe", sandbox=Sandbox())
def probe_escapes(
    *, outside: str, socket_file: str, neighbour: int, nice: int, import_dir_file: str, shm_key: int
) -> dict[str, str]:
    """Try one escape of each class; what happened to each attempt.

    Args:
        outside: a readable file outside the jail.
        socket_file: a datagram socket file (in the jail, so visible inside bubblewrap).
        neighbour: another process of the same user.
        nice: its current nice value (set again: no change if it goes through).
        import_dir_file: a file in a directory on the worker's ``sys.path``.
        shm_key: a System V IPC key for this check.
    """
    return _outcomes(
        {
            "read a file outside the jail": lambda: Path(outside).read_bytes(),
            "write outside the jail": lambda: Path(outside).with_suffix(".loom").write_text("x"),
            "read a directory on the worker's import path": (
                lambda: Path(import_dir_file).read_bytes()
            ),
            "open a TCP connection": lambda: socket.create_connection(("127.0.0.1", 22), 1),
            "open a UNIX socket": lambda: socket.socket(socket.AF_UNIX),
            "send to a socket file from a datagram socketpair": lambda: _dgram_pair(socket_file),
            "read /proc of another process": (
                lambda: Path(f"/proc/{neighbour}/environ").read_bytes()
            ),
            "signal another process": lambda: os.kill(neighbour, 0),
            "read another process's limits": (
                lambda: resource.prlimit(neighbour, resource.RLIMIT_NOFILE)
            ),
            "set another process's priority": (
                lambda: os.setpriority(os.PRIO_PROCESS, neighbour, nice)
            ),
            "make a child of the parent (CLONE_PARENT)": _clone_parent,
            "find an earlier call's System V shared memory": lambda: _earlier_shm(shm_key),
            "seek in the worker's standard error": lambda: os.lseek(2, 0, os.SEEK_CUR),
        }
    )


def _mptcp(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, _IPPROTO_MPTCP) as sock:
        sock.settimeout(1)
        sock.connect(("127.0.0.1", port))


def _listen() -> None:
    with socket.socket() as sock:
        sock.listen()


@tool(
    name="loom.sandbox.probe_network",
    sandbox=Sandbox(net=NetRules(mode="loopback", ports=(_PORT_ALLOWED,))),
)
def probe_network(port: int) -> dict[str, str]:
    """With sockets allowed to one port only, try the ways around that; what happened.

    Args:
        port: a listening TCP port on 127.0.0.1 that the policy does not allow.
    """
    return _outcomes(
        {
            "connect to a TCP port the policy does not list": (
                lambda: socket.create_connection(("127.0.0.1", port), 1).close()
            ),
            "connect with MPTCP (protocol 262)": lambda: _mptcp(port),
            "listen on an unbound socket": _listen,
            "open an ICMP socket": (
                lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
            ),
        }
    )


async def _call_once(item: Tool, jail: Path, args: dict[str, Any], calls: int = 1) -> Any:
    """Start a sandbox for ``item`` alone, call it ``calls`` times; its report and the
    last answer."""
    assert item.sandbox is not None
    runner = SandboxRunner(
        [item],
        item.sandbox,
        jail,
        probe_host(),
        max_payload=1 << 20,
        progress=lambda token, data: None,
    )
    try:
        report = await runner.start()
        data = b""
        for number in range(1, calls + 1):
            context = ToolContext(number, item.name, 10.0, lambda token, data: None)
            data = await runner.call(number, item, args, context)
    finally:
        await runner.close()
    return report, decode_value(data)


async def check_host() -> tuple[dict[str, str], dict[str, str]]:
    """Start the sandboxes, return the default policy's layer report and every escape
    probe's result.

    Raises:
        SandboxUnavailableError: the launcher could not start here.
        ToolError: a probe call failed.
    """
    with contextlib.ExitStack() as stack:
        jail = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="loom-check-")))
        on_path = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="loom-path-")))
        (on_path / "secret").write_text("not for tools")
        sys.path.append(str(on_path))  # as a worker's working directory is, under -m
        stack.callback(sys.path.remove, str(on_path))
        sink = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        sink.bind(str(jail / "sink"))
        server = stack.enter_context(socket.socket())
        server.bind(("127.0.0.1", 0))
        server.listen()
        outside = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="loom-out-")))
        (outside / "file").write_text("not for tools")
        args = {
            "outside": str(outside / "file"),
            "socket_file": str(jail / "sink"),
            "neighbour": os.getpid(),
            "nice": os.getpriority(os.PRIO_PROCESS, 0),
            "import_dir_file": str(on_path / "secret"),
            "shm_key": 0x4C000000 | (os.getpid() & 0xFFFF),
        }
        report, escapes = await _call_once(probe_escapes, jail, args, calls=2)
        _, network = await _call_once(probe_network, jail, {"port": server.getsockname()[1]})
    return report, {**escapes, **network}
