"""The commands ``shell.run`` may run, and the checks on their arguments.

Only read-mostly commands are allowed, each found in ``/usr/bin`` or ``/bin``. Options
that run other programs, write files, follow symlinks while recursing or read a list of
file names are refused. Every other argument that may name a file must stay in the jail
(:func:`loom.tools.builtin._paths.resolve`): an absolute path elsewhere, ``..`` above the
jail or a symlink out is refused.

Options are parsed as GNU ``getopt`` does: short options group (``-la``) and take their
value attached (``-n5``) or as the next argument; long options take it after ``=`` or as
the next argument and may be abbreviated. The value of an option known to take text (a
pattern, a delimiter, a count) is not checked; any other value, and every operand, is
checked as a path, so an operand the command reads as text (``grep``'s pattern) that
looks like a path outside the jail (``/etc``) is refused: give it with ``-e`` instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from loom.errors import CommandRefusedError, InvalidParamsError
from loom.tools.builtin._paths import resolve

__all__ = ["COMMANDS", "CommandRefusedError", "check_argv"]

_BIN_DIRS = ("/usr/bin", "/bin")


@dataclass(frozen=True)
class _Rules:
    """What one command may be given.

    Attributes:
        refused: options refused, with the reason: whole words (``find``'s ``-exec``),
            short letters alone or grouped (``-o`` also refuses ``-uo``), and long options
            with any abbreviation GNU accepts (``--output`` also refuses ``--out``).
        values: short option letters that take a value.
        paths: those of ``values`` whose value is a file (checked; the others are text).
        optional: short option letters whose optional value can only be attached
            (``date -Iseconds``).
        text: long options (``find``: words) whose value is text, not a file.
        files: arguments may name files; ``False``: nothing is checked.
        grouped: short options group GNU-style; ``find``'s options are whole words.
    """

    refused: dict[str, str] = field(default_factory=dict)
    values: str = ""
    paths: str = ""
    optional: str = ""
    text: frozenset[str] = frozenset()
    files: bool = True
    grouped: bool = True


_NO_FILES = _Rules(files=False)
_FOLLOWS = "follows symlinks, which may lead outside the jail"
_FILE_LIST = "reads the names of the files to open from a file"
_RUNS = "runs another program"
_WRITES = "writes a file"

COMMANDS: dict[str, _Rules] = {
    "basename": _NO_FILES,
    "cat": _Rules(),
    "cut": _Rules(
        values="bcdf",
        text=frozenset(
            {"--bytes", "--characters", "--delimiter", "--fields", "--output-delimiter"}
        ),
    ),
    "date": _Rules(
        refused={"-s": "sets the clock", "--set": "sets the clock"},
        values="dfrs",
        paths="fr",
        optional="I",
        text=frozenset({"--date", "--iso-8601", "--rfc-3339"}),
    ),
    "diff": _Rules(
        refused={"-r": _FOLLOWS, "--recursive": _FOLLOWS},
        values="CDFILSUWXx",
        paths="X",
        text=frozenset({"--ignore-matching-lines", "--label", "--exclude", "--ifdef"}),
    ),
    "dirname": _NO_FILES,
    "du": _Rules(
        refused={"-L": _FOLLOWS, "--dereference": _FOLLOWS, "--files0-from": _FILE_LIST},
        values="BdtX",
        paths="X",
        text=frozenset({"--block-size", "--max-depth", "--threshold", "--exclude"}),
    ),
    "echo": _NO_FILES,
    "false": _NO_FILES,
    "find": _Rules(
        refused={
            "-exec": _RUNS,
            "-execdir": _RUNS,
            "-ok": _RUNS,
            "-okdir": _RUNS,
            "-delete": "deletes files",
            "-fprint": _WRITES,
            "-fprint0": _WRITES,
            "-fprintf": _WRITES,
            "-fls": _WRITES,
            "-L": _FOLLOWS,
            "-follow": _FOLLOWS,
            "-files0-from": _FILE_LIST,
        },
        text=frozenset(
            {
                "-name",
                "-iname",
                "-path",
                "-ipath",
                "-wholename",
                "-iwholename",
                "-regex",
                "-iregex",
                "-lname",
                "-ilname",
                "-printf",
            }
        ),
        grouped=False,
    ),
    "grep": _Rules(
        refused={"-R": _FOLLOWS, "--dereference-recursive": _FOLLOWS},
        values="ABCDdefm",
        paths="f",
        text=frozenset({"--regexp", "--include", "--exclude", "--exclude-dir"}),
    ),
    "head": _Rules(values="cn", text=frozenset({"--bytes", "--lines"})),
    "ls": _Rules(
        refused={"-L": _FOLLOWS, "--dereference": _FOLLOWS},
        values="ITw",
        text=frozenset({"--ignore", "--hide", "--format", "--sort", "--time-style"}),
    ),
    "pwd": _NO_FILES,
    "seq": _NO_FILES,
    "sleep": _NO_FILES,
    "sort": _Rules(
        refused={
            "-o": _WRITES,
            "--output": _WRITES,
            "--compress-program": _RUNS,
            "--files0-from": _FILE_LIST,
        },
        values="kotST",
        paths="T",
        text=frozenset({"--key", "--field-separator", "--buffer-size", "--parallel"}),
    ),
    "stat": _Rules(values="c", text=frozenset({"--format", "--printf"})),
    "tail": _Rules(values="cns", text=frozenset({"--bytes", "--lines", "--sleep-interval"})),
    "tr": _NO_FILES,
    "true": _NO_FILES,
    "uniq": _Rules(values="fsw"),
    "wc": _Rules(refused={"--files0-from": _FILE_LIST}),
}
"""The commands allowed, by name."""


def check_argv(jail: Path, argv: list[str]) -> str:
    """Check a command line against the allowlist and the jail.

    Args:
        jail: the directory file arguments must stay in.
        argv: the command's name, then its arguments.

    Returns:
        The absolute path of the command to run.

    Raises:
        InvalidParamsError: ``argv`` is empty or an argument contains a NUL byte.
        CommandRefusedError: the command is not allowed or not installed, or an option is
            refused (the message names it and says why).
        PathEscapeError: an argument names a file outside the jail.
    """
    if not argv:
        raise InvalidParamsError("argv is empty: give a command name and its arguments")
    if any("\0" in arg for arg in argv):
        raise InvalidParamsError("an argument contains a NUL byte")
    name = argv[0]
    rules = COMMANDS.get(name)
    if rules is None:
        allowed = ", ".join(sorted(COMMANDS))
        raise CommandRefusedError(f"command {name!r} is not allowed; allowed: {allowed}")
    executable = _executable(name)
    if rules.files:
        _Checker(jail, name, rules).check(argv[1:])
    return executable


def _executable(name: str) -> str:
    for directory in _BIN_DIRS:
        path = os.path.join(directory, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise CommandRefusedError(f"command {name!r} is allowed but not installed in /usr/bin or /bin")


class _Checker:
    """Walk one command's arguments: refuse options, check file arguments."""

    def __init__(self, jail: Path, name: str, rules: _Rules) -> None:
        self._jail = jail
        self._name = name
        self._rules = rules
        self._next: bool | None = None
        """The next argument is an option's value: a file (``True``) or text."""

    def check(self, args: list[str]) -> None:
        options = True
        for arg in args:
            if self._next is not None:
                if self._next:
                    resolve(self._jail, arg)
                self._next = None
            elif not options or arg == "-" or not arg.startswith("-"):
                resolve(self._jail, arg)
            elif arg == "--":
                options = False
            elif arg.startswith("--") or not self._rules.grouped:
                self._word(arg)
            else:
                self._short(arg)

    def _refuse(self, option: str, reason: str) -> None:
        raise CommandRefusedError(f"{self._name}: {option} is refused: it {reason}")

    def _word(self, arg: str) -> None:
        """A long option (``--name[=value]``, maybe abbreviated) or a ``find`` word."""
        option, equals, value = arg.partition("=")
        for refused, reason in self._rules.refused.items():
            if refused == option or (option.startswith("--") and refused.startswith(option)):
                self._refuse(refused, reason)
        text = option in self._rules.text
        if equals and not text:
            resolve(self._jail, value)
        elif not equals and text:
            self._next = False

    def _short(self, arg: str) -> None:
        """A group of short options; the first that takes a value takes the rest."""
        for index, letter in enumerate(arg[1:], start=1):
            reason = self._rules.refused.get(f"-{letter}")
            if reason is not None:
                self._refuse(f"-{letter}", reason)
            if letter in self._rules.optional:
                return
            if letter in self._rules.values:
                path = letter in self._rules.paths
                value = arg[index + 1 :]
                if not value:
                    self._next = path
                elif path:
                    resolve(self._jail, value)
                return
