"""``shell.run``: run one allowed command in the jail, without a shell.

The command line is checked by :mod:`loom.tools.builtin._commands` (allowlist, refused
options, file arguments inside the jail). The command runs with the jail as working and
home directory and a minimal environment; on timeout or cancellation it is killed.
Output is kept up to a bound per stream; the rest is read and dropped, so a command that
writes a lot cannot fill the tool's memory.

Outside a sandbox the command gets a session of its own, and a kill takes its whole
process group. In Loom's sandbox (the call has a policy) seccomp refuses ``setsid``: the
command stays in the call's process group, which the launcher kills when the call ends,
and a kill takes the command's process (none of the allowed commands starts others).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field
from typing_extensions import TypedDict

from loom.tools._tool import ToolContext, tool
from loom.tools.builtin._commands import check_argv
from loom.tools.builtin._paths import jail_of
from loom.tools.sandbox._policy import Limits, Sandbox

__all__ = ["RunResult", "shell_run"]

_MAX_TIMEOUT = 120.0
_MAX_OUTPUT = 1 << 24
_CHUNK = 1 << 16
_SETTLE = 5.0
"""Seconds to wait for a killed command's pipes to close."""
_KEPT_ENV = ("LANG", "LC_ALL", "TZ")
_SANDBOX = Sandbox(limits=Limits(processes=16, cpu_seconds=60, wall_seconds=_MAX_TIMEOUT + 10))
"""No network (the default); room for the command's processes and time. The launcher
makes ``/usr``, ``/bin`` and the libraries readable and executable."""


class RunResult(TypedDict):
    """What ``shell.run`` returns."""

    exit_code: int
    """The command's exit status; negative: the signal that killed it."""
    stdout: str
    stderr: str
    truncated: bool
    """Some output was dropped (more than ``max_output`` bytes on a stream)."""
    timed_out: bool
    """The command ran past ``timeout`` and was killed."""


class _Capture:
    """Read a stream to its end, keeping the first ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False

    async def drain(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while chunk := await stream.read(_CHUNK):
            room = self.limit - len(self.data)
            if len(chunk) > room:
                self.truncated = True
            if room > 0:
                self.data += chunk[:room]

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


@tool(name="shell.run", timeout=_MAX_TIMEOUT + 5, sandbox=_SANDBOX)
async def shell_run(
    argv: list[str],
    ctx: ToolContext,
    timeout: Annotated[float, Field(gt=0, le=_MAX_TIMEOUT)] = 10,
    max_output: Annotated[int, Field(ge=0, le=_MAX_OUTPUT)] = 65536,
    stdin: str | None = None,
) -> RunResult:
    """Run an allowed read-mostly command (ls, cat, grep, find, sort...) in the jail.

    There is no shell: no pipes, globs, redirections or variables. Arguments naming
    files must stay in the jail; options that run programs, write files elsewhere or
    follow symlinks out are refused.

    Args:
        argv: the command's name, then its arguments.
        timeout: seconds the command may run before its processes are killed.
        max_output: the most bytes kept of standard output, and of standard error.
        stdin: text for the command's standard input (none: it reads end of file).

    Raises:
        JailRequiredError: the call has no jail.
        CommandRefusedError: the command or one of its options is not allowed.
        PathEscapeError: an argument names a file outside the jail.
        InvalidParamsError: ``argv`` is empty or contains a NUL byte.
        OSError: the command could not be started.
    """
    jail = jail_of(ctx)
    executable = check_argv(jail, argv)
    own_group = ctx.sandbox is None
    process = await asyncio.create_subprocess_exec(
        executable,
        *argv[1:],
        cwd=jail,
        env=_environment(jail),
        stdin=asyncio.subprocess.PIPE,  # not DEVNULL: the sandbox may not open it to write
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=own_group,
    )
    out, err = _Capture(max_output), _Capture(max_output)
    work = asyncio.gather(
        out.drain(process.stdout),
        err.drain(process.stderr),
        _feed(process.stdin, stdin),
        process.wait(),
    )
    timed_out = False
    try:
        await asyncio.wait_for(asyncio.shield(work), timeout)
    except TimeoutError:
        timed_out = True
    finally:
        if not work.done():  # timed out, or the call was cancelled
            _kill(process.pid, own_group)
            await _settle(work)
    return {
        "exit_code": await process.wait(),
        "stdout": out.text(),
        "stderr": err.text(),
        "truncated": out.truncated or err.truncated,
        "timed_out": timed_out,
    }


async def _settle(work: asyncio.Future[Any]) -> None:
    """Let the killed command's pipes reach their end (the last output is kept); give up
    after a few seconds should something outside the process group still hold them."""
    try:
        await asyncio.wait_for(asyncio.shield(work), _SETTLE)
    except TimeoutError:
        work.cancel()


def _environment(jail: Path) -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(jail)}
    env.update({name: os.environ[name] for name in _KEPT_ENV if name in os.environ})
    return env


async def _feed(pipe: asyncio.StreamWriter | None, text: str | None) -> None:
    """Write ``text`` (if any) to the command's standard input and close it, so that the
    command reads end of file; a command that exits without reading it all is not an
    error."""
    if pipe is None:
        return
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        if text:
            pipe.write(text.encode("utf-8"))
            await pipe.drain()
        pipe.close()
        await pipe.wait_closed()


def _kill(pid: int, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
