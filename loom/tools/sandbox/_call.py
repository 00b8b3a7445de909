"""A call's process: forked by the zygote ahead of need (a spare), it confines itself
further (its own process group and user namespace, rlimits, a Landlock signal scope, no
capabilities, seccomp), warms up an event loop, then waits for its one call, runs it,
writes the answer and exits. Confinement and warm-up happen before the call arrives, so
they cost the caller nothing when a spare is ready.
"""

from __future__ import annotations

import asyncio
import os
import resource
import traceback
from typing import TYPE_CHECKING, Any, NoReturn

from loom.errors import LoomError, PayloadTooLargeError
from loom.protocol import FrameReader, encode_value, write_frame
from loom.tools._tool import ToolContext
from loom.tools.sandbox import _kernel as kernel
from loom.tools.sandbox._policy import Limits

if TYPE_CHECKING:
    from loom.tools.sandbox._confined import Confined

__all__ = ["call_main"]

_MB = 1024 * 1024
_EFBIG = 27


def call_main(launcher: Confined, requests: int, answers: int) -> NoReturn:
    """The body of a forked call process; never returns."""
    code = 0
    try:
        kernel.die_with_parent()
        os.setpgid(0, 0)
        os.dup2(2, 1)  # a tool's print() must not reach the launcher's protocol pipe
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        _close_all_but(requests, answers)  # other calls' pipes, the launcher's own
        _confine(launcher)
        loop = asyncio.new_event_loop() if launcher.any_async else None
        frame = _read_frame(requests)
        if frame is not None:  # None: the launcher is shutting down
            _, call_id, name, args, timeout = frame
            _answer(launcher, loop, answers, call_id, name, args=args, timeout=timeout)
    except BaseException:
        traceback.print_exc()
        code = 70
    finally:
        os._exit(code)


def _close_all_but(*keep: int) -> None:
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 16)


def _confine(launcher: Confined) -> None:
    if launcher.userns:  # its own user namespace: RLIMIT_NPROC counts this call only
        kernel.unshare(kernel.CLONE_NEWUSER)  # unmapped: the tool sees uid 65534
    _set_limits(launcher.policy.limits)
    if launcher.landlock_abi >= 6:  # a nested domain: signals reach only this call's tree
        kernel.landlock_restrict(
            launcher.landlock_abi, restrict_fs=False, restrict_net=False, scope=True
        )
    kernel.drop_capabilities(launcher.last_cap)
    if launcher.seccomp is not None:
        launcher.seccomp.load()


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
) -> None:
    def report(_: int, data: Any) -> None:
        try:
            write_frame(pipe, "progress", encode_value(data, min(launcher.max_payload, 64 * 1024)))
        except LoomError:
            write_frame(pipe, "progress", b"")

    tool = launcher.tools[name]
    limits = launcher.policy.limits
    try:
        kwargs = tool.bind(args)
        context = ToolContext(
            call_id, tool.name, timeout, report, sandbox=launcher.policy, jail=launcher.jail
        )
        if tool.context_param is not None:
            kwargs[tool.context_param] = context
        if loop is not None and tool.is_async:
            result = loop.run_until_complete(tool.fn(**kwargs))
        else:
            result = tool.fn(**kwargs)
        data = encode_value(result, launcher.max_payload)
    except PayloadTooLargeError as exc:
        write_frame(pipe, "fail", "TOO_LARGE", f"{tool.name}'s result: {exc}", {"size": exc.size})
    except MemoryError:
        message = f"{tool.name} ran out of memory (limit {limits.memory_mb} MiB)"
        write_frame(pipe, "fail", "LIMIT_EXCEEDED", message, {"limit": "memory_mb"})
    except Exception as exc:
        text = str(exc)[:4096]
        kind = type(exc).__name__
        if isinstance(exc, OSError) and exc.errno == _EFBIG:  # RLIMIT_FSIZE
            write_frame(
                pipe, "fail", "LIMIT_EXCEEDED", f"{kind}: {text}", {"limit": "file_size_mb"}
            )
        else:
            write_frame(
                pipe,
                "fail",
                "TOOL_ERROR",
                f"{kind}: {text}",
                {"type": kind, "remote_message": text},
            )
    else:
        write_frame(pipe, "result", data)
