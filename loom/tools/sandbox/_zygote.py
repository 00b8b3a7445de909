"""The zygote: forked by the launcher right after it confines itself, before any call's
data reaches it, it forks the call processes. A call process forked from the launcher
would inherit the launcher's memory, where earlier calls' arguments and results lie
(live in its frames, or freed but not cleared); one forked from the zygote inherits
only the tools and the policy.

The launcher asks for a spare with ``b"spare"`` on a SOCK_SEQPACKET pair; the zygote
answers ``["spare", pid]`` with the parent's ends of the call's two pipes attached
(SCM_RIGHTS), ``["fork_failed", errno]``, and, when a call process ends,
``["exit", pid, status, cpu_seconds]`` after killing what it left in its process group.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
from typing import TYPE_CHECKING, NoReturn

from loom.protocol import pack_frame
from loom.tools.sandbox import _kernel as kernel
from loom.tools.sandbox._call import call_main

if TYPE_CHECKING:
    from loom.tools.sandbox._confined import Confined

__all__ = ["zygote_main"]


def zygote_main(launcher: Confined, link: socket.socket) -> NoReturn:
    """Fork call processes on request and report their ends; exits when the launcher
    does (its link closes, or the parent-death signal)."""
    code = 0
    try:
        kernel.die_with_parent()
        if launcher.seccomp_ready:
            from loom.tools.sandbox._seccomp import build_filter

            launcher.seccomp = build_filter(launcher.policy.net, [*launcher.protect, os.getpid()])
        selector = selectors.DefaultSelector()
        selector.register(link, selectors.EVENT_READ)
        children: dict[int, int] = {}  # pidfd -> pid
        running = True
        while running:
            for key, _ in selector.select():
                if key.fileobj is link:
                    running = bool(link.recv(16))  # empty: the launcher is gone
                    if running:
                        _spare(launcher, link, selector, children)
                else:
                    _reap(int(key.fd), link, selector, children)
    except (BrokenPipeError, ConnectionError):  # the launcher is gone: so are we
        pass
    except BaseException:  # the process ends either way: say why
        import traceback

        traceback.print_exc()
        code = 70
    finally:
        os._exit(code)


def _spare(
    launcher: Confined,
    link: socket.socket,
    selector: selectors.BaseSelector,
    children: dict[int, int],
) -> None:
    requests_out, requests_in = os.pipe2(os.O_CLOEXEC)
    answers_out, answers_in = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
    except OSError as exc:  # EAGAIN: the pids cgroup (or RLIMIT_NPROC) is full
        for fd in (requests_out, requests_in, answers_out, answers_in):
            os.close(fd)
        link.send(pack_frame("fork_failed", exc.errno or 0))
        return
    if pid == 0:
        call_main(launcher, requests_out, answers_in)
    os.close(requests_out)
    os.close(answers_in)
    with contextlib.suppress(OSError):  # it did it itself, or it is gone already
        os.setpgid(pid, pid)
    pidfd = os.pidfd_open(pid)
    children[pidfd] = pid
    selector.register(pidfd, selectors.EVENT_READ)
    socket.send_fds(link, [pack_frame("spare", pid)], [requests_in, answers_out])
    os.close(requests_in)
    os.close(answers_out)


def _reap(
    pidfd: int, link: socket.socket, selector: selectors.BaseSelector, children: dict[int, int]
) -> None:
    pid = children.pop(pidfd)
    selector.unregister(pidfd)
    os.close(pidfd)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # before reaping: the group id cannot be reused yet
    _, status, usage = os.wait4(pid, 0)
    link.send(pack_frame("exit", pid, status, usage.ru_utime + usage.ru_stime))
