"""Run an MCP server so that it, and the processes it starts in its process group, end
with the worker that started it, however the worker ends (SIGKILL included): orphaned
servers are the most common complaint against MCP clients.

``python -I _leash.py [--parent PID] [--rlimit NAME=VALUE]... COMMAND ARGS...``. Run as a
script, not imported (``-I``: no site, no Loom import, a fast start). Linux only
(``prctl``, ``/proc``).

The SDK starts each stdio server as the leader of a new session; this leash is that
leader. It asks the kernel for SIGTERM when its parent (the worker) dies, starts the
server as its child (which inherits the pipes directly: nothing is relayed), and on
SIGTERM, or when the server exits, ends the whole process group: SIGTERM, two seconds
of grace, SIGKILL. A process that leaves the group (``setsid``) escapes, as it would
any supervisor.
"""

import contextlib
import ctypes
import os
import resource
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
GRACE = 2.0
LIMITS = {
    "as": resource.RLIMIT_AS,
    "nofile": resource.RLIMIT_NOFILE,
    "fsize": resource.RLIMIT_FSIZE,
}


def members() -> list[int]:
    """The other live processes of this process group."""
    group, me, found = os.getpgid(0), os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != b"Z" and int(fields[2]) == group:  # state, ppid, pgrp
            found.append(int(entry))
    return found


def end_group() -> None:
    """SIGTERM to the group (this process ignores it), up to GRACE seconds for it to
    go, then SIGKILL to what is left."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.killpg(0, signal.SIGTERM)
    deadline = time.monotonic() + GRACE
    while members() and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(-1, os.WNOHANG)  # reap our own child as it goes
        time.sleep(0.02)
    for pid in members():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def on_term(*_: object) -> None:
    end_group()
    os._exit(143)


def main() -> None:
    argv = sys.argv[1:]
    parent: int | None = None
    limits: list[tuple[int, int]] = []
    while argv[:1] in (["--parent"], ["--rlimit"]):
        if argv[0] == "--parent":
            parent = int(argv[1])
        else:
            limit, _, value = argv[1].partition("=")
            limits.append((LIMITS[limit], int(value)))
        argv = argv[2:]
    if not argv:
        sys.exit("usage: _leash.py [--parent PID] [--rlimit NAME=VALUE]... COMMAND ARGS...")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if parent is not None and os.getppid() != parent:  # it died before the request held
        sys.exit(1)
    signal.signal(signal.SIGTERM, on_term)
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for which, bound in limits:
            resource.setrlimit(which, (bound, bound))
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            os.write(2, f"cannot start {argv[0]}: {exc.strerror}\n".encode())
            os._exit(127)
    # the server holds the pipes now: the worker must see them close when it exits
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    end_group()
    sys.exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


if __name__ == "__main__":
    main()
