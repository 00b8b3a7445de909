"""The zygote: forked by the launcher right after it confines itself, before any call's
data reaches it, it forks the call processes. A call process forked from the launcher
would inherit the launcher's memory, where earlier calls' arguments and results lie
(live in its frames, or freed but not cleared); one forked from the zygote inherits
only the tools and the policy.

The launcher asks for a spare with ``b"spare"`` on a SOCK_SEQPACKET pair; the zygote
answers ``["spare", pid]`` with the parent's ends of the call's three pipes attached
(SCM_RIGHTS: requests, answers, output), ``["fork_failed", errno]``, and, when a call
process ends, ``["exit", pid, status, cpu_seconds]`` after killing what it left in its
process group. The zygote is a child subreaper: whatever a call leaves behind (orphans,
``clone(CLONE_PARENT)`` children where seccomp is missing) becomes its child, and it
reaps every child on SIGCHLD, so no zombie fills the pids limit.
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
        kernel.child_subreaper()
        if launcher.seccomp_ready:
            from loom.tools.sandbox._seccomp import build_filter, compile_filter

            private_ipc = bool(launcher.call_namespaces & kernel.CLONE_NEWIPC)
            # in a PID namespace of its own a call can name no outside process, and the
            # pids it can name (its children's) may equal the outside ones we protect
            own_pids = bool(launcher.call_namespaces & kernel.CLONE_NEWPID)
            protect = [] if own_pids else [*launcher.protect, os.getpid()]
            flt = build_filter(launcher.policy.net, protect, private_ipc=private_ipc)
            launcher.seccomp = compile_filter(flt)
        wakeup, woken = socket.socketpair()
        for end in (wakeup, woken):
            end.setblocking(False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(woken.fileno(), warn_on_full_buffer=False)
        selector = selectors.DefaultSelector()
        selector.register(link, selectors.EVENT_READ)
        selector.register(wakeup, selectors.EVENT_READ)
        children: set[int] = set()
        running = True
        while running:
            for key, _ in selector.select():
                if key.fileobj is link:
                    running = bool(link.recv(16))  # empty: the launcher is gone
                    if running:
                        _spare(launcher, link, children)
                else:
                    with contextlib.suppress(BlockingIOError):
                        wakeup.recv(4096)
                    _reap(link, children)
    except (BrokenPipeError, ConnectionError):  # the launcher is gone: so are we
        pass
    except BaseException:  # the process ends either way: say why
        import traceback

        traceback.print_exc()
        code = 70
    finally:
        os._exit(code)


def _spare(launcher: Confined, link: socket.socket, children: set[int]) -> None:
    requests_out, requests_in = os.pipe2(os.O_CLOEXEC)
    answers_out, answers_in = os.pipe2(os.O_CLOEXEC)
    output_out, output_in = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
    except OSError as exc:  # EAGAIN: the pids cgroup (or RLIMIT_NPROC) is full
        for fd in (requests_out, requests_in, answers_out, answers_in, output_out, output_in):
            os.close(fd)
        link.send(pack_frame("fork_failed", exc.errno or 0))
        return
    if pid == 0:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        call_main(launcher, requests_out, answers_in, output_in)
    for fd in (requests_out, answers_in, output_in):
        os.close(fd)
    with contextlib.suppress(OSError):  # it did it itself, or it is gone already
        os.setpgid(pid, pid)
    children.add(pid)
    socket.send_fds(link, [pack_frame("spare", pid)], [requests_in, answers_out, output_out])
    for fd in (requests_in, answers_out, output_out):
        os.close(fd)


def _reap(link: socket.socket, children: set[int]) -> None:
    """Reap every child that has ended: report a call process's end (after killing what
    it left in its group), and drop anything else (orphans, CLONE_PARENT children)."""
    while True:
        try:
            ended = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if ended is None:
            return
        pid = ended.si_pid
        if pid not in children:
            os.waitpid(pid, 0)
            continue
        children.discard(pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # before reaping: the group id cannot be reused
        _, status, usage = os.wait4(pid, 0)
        link.send(pack_frame("exit", pid, status, usage.ru_utime + usage.ru_stime))
