"""``shell.run``: allowed commands run in the jail; refused ones, and escapes, do not."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import MakeContext, until

from loom.errors import InvalidParamsError
from loom.tools.builtin import (
    CommandRefusedError,
    JailRequiredError,
    PathEscapeError,
    shell_run,
)
from loom.tools.sandbox._policy import Sandbox


def run(
    context: MakeContext, argv: list[str], sandbox: Sandbox | None = None, **options: Any
) -> dict[str, Any]:
    ctx = context("shell.run", sandbox=sandbox)
    result: dict[str, Any] = asyncio.run(shell_run.fn(argv=argv, ctx=ctx, **options))
    return result


SANDBOXED = pytest.mark.parametrize("sandbox", [None, Sandbox()], ids=["own-session", "call-group"])
"""Outside a sandbox the command gets its own session; with a policy (in the launcher,
where setsid is refused) it stays in the call's process group."""


def test_output_and_exit_code(context: MakeContext) -> None:
    """Standard output, standard error and the exit code come back."""
    assert run(context, ["echo", "hello", "world"]) == {
        "exit_code": 0,
        "stdout": "hello world\n",
        "stderr": "",
        "truncated": False,
        "timed_out": False,
    }
    failed = run(context, ["ls", "missing"])
    assert failed["exit_code"] != 0
    assert "missing" in failed["stderr"]


def test_runs_in_the_jail(jail: Path, context: MakeContext) -> None:
    """The working directory is the jail; relative file arguments are read there."""
    (jail / "data.txt").write_text("b\na\nb\n")
    assert run(context, ["pwd"])["stdout"] == f"{jail}\n"
    assert run(context, ["sort", "-u", "data.txt"])["stdout"] == "a\nb\n"
    assert run(context, ["grep", "-c", "b", str(jail / "data.txt")])["stdout"] == "2\n"


def test_stdin_is_fed(context: MakeContext) -> None:
    """``stdin`` is the command's standard input."""
    assert run(context, ["tr", "a-z", "A-Z"], stdin="shout\n")["stdout"] == "SHOUT\n"
    assert run(context, ["cut", "-d/", "-f2"], stdin="a/b/c\n")["stdout"] == "b\n"
    assert run(context, ["cut", "-d", "/", "-f3"], stdin="a/b/c\n")["stdout"] == "c\n"


@pytest.mark.parametrize(
    "argv",
    [["rm", "-rf", "."], ["python3", "-c", "1"], ["/bin/ls"], ["sh", "-c", "ls"]],
)
def test_commands_outside_the_allowlist_are_refused(argv: list[str], context: MakeContext) -> None:
    """Only allowlisted command names run; a path as command is refused too."""
    with pytest.raises(CommandRefusedError, match="is not allowed"):
        run(context, argv)


@pytest.mark.parametrize(
    ("argv", "refused"),
    [
        (["find", ".", "-exec", "cat", "{}", ";"], "-exec"),
        (["find", ".", "-delete"], "-delete"),
        (["find", "-L", "."], "-L"),
        (["sort", "-o", "out", "x"], "-o"),
        (["sort", "-uo", "out", "x"], "-o"),
        (["sort", "--out=out", "x"], "--output"),
        (["sort", "--compress-program=sh", "x"], "--compress-program"),
        (["grep", "-iR", "x", "."], "-R"),
        (["wc", "--files0-from=list"], "--files0-from"),
        (["date", "-s", "2000-01-01"], "-s"),
    ],
)
def test_unsafe_options_are_refused(argv: list[str], refused: str, context: MakeContext) -> None:
    """Options that run programs, write, follow symlinks out or read name lists are refused."""
    with pytest.raises(CommandRefusedError, match=f"{refused} is refused: it "):
        run(context, argv)


def test_options_after_double_dash_are_operands(jail: Path, context: MakeContext) -> None:
    """After ``--`` an argument that looks like a refused option is a file name."""
    (jail / "-o").write_text("dash\n")
    assert run(context, ["cat", "--", "-o"])["stdout"] == "dash\n"


def test_find_with_safe_options_runs(jail: Path, context: MakeContext) -> None:
    """find with a name pattern lists matching files."""
    (jail / "sub").mkdir()
    (jail / "sub" / "x.py").write_text("")
    assert run(context, ["find", ".", "-name", "*.py"])["stdout"] == "./sub/x.py\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["cat", "/etc/passwd"],
        ["cat", "../outside/secret"],
        ["cat", "out/secret"],
        ["cat", "link"],
        ["ls", ".."],
        ["find", "/", "-name", "secret"],
        ["grep", "--file=/etc/passwd", "x"],
        ["diff", "link", "link"],
    ],
)
@pytest.mark.usefixtures("outside")
def test_file_arguments_outside_are_refused(
    argv: list[str], jail: Path, outside: Path, context: MakeContext
) -> None:
    """Absolute paths elsewhere, ``..`` out and symlinks out are refused as arguments."""
    (jail / "out").symlink_to(outside)
    (jail / "link").symlink_to(outside / "secret")
    with pytest.raises(PathEscapeError):
        run(context, argv)


@pytest.mark.usefixtures("outside")
def test_option_values_are_checked_unless_text(
    jail: Path, outside: Path, context: MakeContext
) -> None:
    """A file value is checked attached or not; a text value (a pattern) is not."""
    (jail / "link").symlink_to(outside / "secret")
    for argv in (["grep", "-f/etc/passwd", "x"], ["grep", "-iflink", "x"], ["grep", "-f", "link"]):
        with pytest.raises(PathEscapeError):
            run(context, argv)
    found = run(context, ["grep", "-e", "/etc", "-e/usr"], stdin="/etc\n/usr\n/var\n")
    assert found["stdout"] == "/etc\n/usr\n"
    assert run(context, ["head", "-n", "-1"], stdin="a\nb\n")["stdout"] == "a\n"


@SANDBOXED
def test_timeout_kills_the_command(sandbox: Sandbox | None, context: MakeContext) -> None:
    """A command past its timeout is killed and reported, promptly."""
    started = time.monotonic()
    result = run(context, ["sleep", "30"], sandbox, timeout=0.5)
    assert result["timed_out"] is True
    assert result["exit_code"] == -9
    assert time.monotonic() - started < 10


def test_large_output_is_truncated(context: MakeContext) -> None:
    """Output past ``max_output`` is dropped; the command still runs to its end."""
    result = run(context, ["seq", "1", "200000"], max_output=1000)
    assert result["truncated"] is True
    assert result["exit_code"] == 0
    assert len(result["stdout"]) == 1000
    assert result["stdout"].startswith("1\n2\n3\n")


@SANDBOXED
def test_cancelling_kills_the_command(sandbox: Sandbox | None, context: MakeContext) -> None:
    """A cancelled call leaves no process behind."""

    def sleepers() -> list[psutil.Process]:
        children = psutil.Process().children(recursive=True)
        return [child for child in children if child.name() == "sleep"]

    async def scenario() -> None:
        call = asyncio.create_task(
            shell_run.fn(
                argv=["sleep", "30"], ctx=context("shell.run", sandbox=sandbox), timeout=60
            )
        )
        await until(sleepers, timeout=10)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    asyncio.run(scenario())
    assert sleepers() == []


def test_bad_argv_is_invalid(context: MakeContext) -> None:
    """An empty command line or a NUL byte is an invalid argument."""
    with pytest.raises(InvalidParamsError, match="empty"):
        run(context, [])
    with pytest.raises(InvalidParamsError, match="NUL"):
        run(context, ["echo", "a\0b"])


def test_needs_a_jail(context: MakeContext) -> None:
    """Without a jail shell.run refuses."""
    with pytest.raises(JailRequiredError, match=r"shell\.run needs a jail"):
        asyncio.run(shell_run.fn(argv=["true"], ctx=context("shell.run", jail=None)))


def test_declared_policy() -> None:
    """shell.run is sandboxed without network and with a process limit."""
    assert shell_run.sandbox is not None
    assert shell_run.sandbox.net.mode == "none"
    assert shell_run.sandbox.limits.processes == 16
