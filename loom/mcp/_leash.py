"""Run an MCP server so that every process it starts ends with the worker that started
it, however the worker ends (SIGKILL included): the most common complaint against MCP
clients is orphaned servers.

``python -I _leash.py [--rlimit NAME=VALUE]... COMMAND ARGS...``. Run as a script, not
imported (``-I``: no site, no Loom import, a fast start). Linux only (``prctl``).

The SDK starts each stdio server as the leader of a new session; this leash is that
leader. It asks the kernel for SIGTERM when its parent (the worker) dies, starts the
server as its child (which inherits the pipes directly: nothing is relayed), and on
SIGTERM, or when the server exits, ends the whole process group.
"""

import contextlib
import ctypes
import os
import resource
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
LIMITS = {
    "as": resource.RLIMIT_AS,
    "nofile": resource.RLIMIT_NOFILE,
    "fsize": resource.RLIMIT_FSIZE,
    "nproc": resource.RLIMIT_NPROC,
}


def end_group(signum: int = signal.SIGTERM) -> None:
    """SIGTERM to the group (this process ignores it), then SIGKILL to what is left."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.killpg(0, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                time.sleep(0.02)
        except ChildProcessError:
            break
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(OSError):
        os.killpg(0, signal.SIGKILL)  # this process too: nothing may outlive the group


def on_term(*_: object) -> None:
    end_group()
    os._exit(143)


def main() -> None:
    argv = sys.argv[1:]
    limits: list[tuple[int, int]] = []
    while argv[:1] == ["--rlimit"]:
        limit, _, value = argv[1].partition("=")
        limits.append((LIMITS[limit], int(value)))
        argv = argv[2:]
    if not argv:
        sys.exit("usage: _leash.py [--rlimit NAME=VALUE]... COMMAND ARGS...")
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the worker died before the request was in place
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
