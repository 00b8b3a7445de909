"""A call's process: forked by the zygote ahead of need (a spare), it confines itself
further (its own process group, user, PID and IPC namespaces, rlimits, a Landlock signal
scope, no capabilities, seccomp), warms up an event loop, then waits for its one call,
runs it, writes the answer and exits. Confinement and warm-up happen before the call
arrives, so they cost the caller nothing when a spare is ready.

A new PID namespace takes effect for children only: the spare forks once more, and the
child, pid 1 of the new namespace, runs the call; the spare waits for it and ends the same
way (its exit code, or its signal), so the zygote and the launcher see one process. When
pid 1 ends, the kernel kills everything else in its namespace. Standard output and error
are a pipe the launcher reads (never the worker's own descriptors).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import select
import signal
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any, NoReturn

from loom.errors import LoomError, PayloadTooLargeError
from loom.protocol import FrameReader, encode_value, pack_frame, write_frame
from loom.tools._tool import ToolContext
from loom.tools.sandbox import _kernel as kernel
from loom.tools.sandbox._policy import Limits

if TYPE_CHECKING:
    from loom.tools.sandbox._confined import Confined

__all__ = ["call_main"]

_LINGER = 0.002
"""Seconds a call process waits after its answer before it exits: tearing a process down
(the pages it copied) takes the CPU the launcher and the worker need to forward the
answer; so does the zygote reaping it and the launcher asking for a spare."""
_MB = 1024 * 1024
_EFBIG = 27


def call_main(launcher: Confined, requests: int, answers: int, output: int) -> NoReturn:
    """The body of a forked call process; never returns.

    Args:
        requests: the pipe its call comes on.
        answers: the pipe its frames go to.
        output: the pipe its standard output and error go to.
    """
    code = 0
    try:
        kernel.die_with_parent()
        os.setpgid(0, 0)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(output, 1)
        os.dup2(output, 2)
        with contextlib.suppress(Exception):  # print() reaches the log line by line
            sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        _close_all_but(requests, answers)  # other calls' pipes, the launcher's own
        if launcher.call_namespaces:
            kernel.unshare(launcher.call_namespaces)  # unmapped: the tool sees uid 65534
            if launcher.call_namespaces & kernel.CLONE_NEWPID:
                child = os.fork()  # pid 1 of the new PID namespace
                if child:
                    os.close(requests)
                    os.close(answers)
                    _end_like(child)
                kernel.die_with_parent()
        _confine(launcher)
        loop = asyncio.new_event_loop() if launcher.any_async else None
        if not select.select([requests], [], [], 0)[0]:  # no call yet: time to spare
            _warm_up(launcher, loop)
        frame = _read_frame(requests)
        if frame is not None:  # None: the launcher is shutting down
            _, call_id, name, args, timeout, caller = frame
            _answer(
                launcher, loop, answers, call_id, name, args=args, timeout=timeout, caller=caller
            )
            time.sleep(_LINGER)
    except BaseException:
        traceback.print_exc()
        code = 70
    finally:
        _flush_streams()
        os._exit(code)


def _warm_up(launcher: Confined, loop: asyncio.AbstractEventLoop | None) -> None:
    """Go through what every call goes through (decoding a frame, binding arguments,
    encoding a result, a turn of the event loop) before the call comes: the first write
    to a page shared with the zygote copies it, and the caller would wait for that."""
    next(iter(FrameReader().feed(pack_frame("call", 0, "", {"a": 1}, 1.0, "local"))))
    encode_value({"warm": [1, 2.0, "x", b"y", None, True]}, 1024)
    for tool in launcher.tools.values():
        with contextlib.suppress(Exception):
            tool.bind({})
    if loop is not None:
        loop.run_until_complete(asyncio.sleep(0))


def _end_like(child: int) -> NoReturn:
    """Wait for ``child``, then end as it did: its exit code, or killed by its signal."""
    _, status = os.waitpid(child, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 70)


def _close_all_but(*keep: int) -> None:
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 16)


def _confine(launcher: Confined) -> None:
    _set_limits(launcher.policy.limits)
    if launcher.landlock_abi >= 6:  # a nested domain: signals reach only this call's tree
        kernel.landlock_restrict(
            launcher.landlock_abi, restrict_fs=False, restrict_net=False, scope=True
        )
    kernel.drop_capabilities(launcher.last_cap)
    if launcher.seccomp is not None:
        kernel.load_seccomp(launcher.seccomp)


def _set_limits(limits: Limits) -> None:
    cpu = max(int(limits.cpu_seconds + 0.999), 1)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * _MB,) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files,) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size_mb * _MB,) * 2)
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes,) * 2)


def _read_frame(fd: int) -> list[Any] | None:
    reader = FrameReader()
    while chunk := os.read(fd, 1 << 16):
        for frame in reader.feed(chunk):
            return frame
    return None


def _answer(
    launcher: Confined,
    loop: asyncio.AbstractEventLoop | None,
    pipe: int,
    call_id: int,
    name: str,
    *,
    args: Any,
    timeout: float,
    caller: str,
) -> None:
    def report(_: int, data: Any) -> None:
        try:
            write_frame(pipe, "progress", encode_value(data, min(launcher.max_payload, 64 * 1024)))
        except LoomError:
            write_frame(pipe, "progress", b"")

    answer = _outcome(
        launcher, loop, report, call_id, name, args=args, timeout=timeout, caller=caller
    )
    _flush_streams()  # what it printed reaches the launcher before its answer
    write_frame(pipe, *answer)


def _outcome(
    launcher: Confined,
    loop: asyncio.AbstractEventLoop | None,
    report: Any,
    call_id: int,
    name: str,
    *,
    args: Any,
    timeout: float,
    caller: str,
) -> tuple[Any, ...]:
    """Run the call: its answer frame's items (``result`` or ``fail``)."""
    tool = launcher.tools[name]
    limits = launcher.policy.limits
    try:
        kwargs = tool.bind(args)
        context = ToolContext(
            call_id,
            tool.name,
            timeout,
            report,
            sandbox=launcher.policy,
            jail=launcher.jail,
            caller=caller or None,
        )
        if tool.context_param is not None:
            kwargs[tool.context_param] = context
        if loop is not None and tool.is_async:
            result = loop.run_until_complete(tool.fn(**kwargs))
        else:
            result = tool.fn(**kwargs)
        return ("result", encode_value(result, launcher.max_payload))
    except PayloadTooLargeError as exc:
        return ("fail", "TOO_LARGE", f"{tool.name}'s result: {exc}", {"size": exc.size})
    except MemoryError:
        message = f"{tool.name} ran out of memory (limit {limits.memory_mb} MiB)"
        return ("fail", "LIMIT_EXCEEDED", message, {"limit": "memory_mb"})
    except Exception as exc:
        text = str(exc)[:4096]
        kind = type(exc).__name__
        if isinstance(exc, OSError) and exc.errno == _EFBIG:  # RLIMIT_FSIZE
            return ("fail", "LIMIT_EXCEEDED", f"{kind}: {text}", {"limit": "file_size_mb"})
        return ("fail", "TOOL_ERROR", f"{kind}: {text}", {"type": kind, "remote_message": text})


def _flush_streams() -> None:
    """Write out what ``print()`` buffered (the process ends with ``os._exit``, which
    does not)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken stream: nothing to do
            stream.flush()
