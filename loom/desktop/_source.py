"""What every desktop source shares: how it publishes, how it starts and stops, and how
a backend says why it cannot run here."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

__all__ = [
    "IS_LINUX",
    "Choice",
    "Publish",
    "Refused",
    "Source",
    "choose",
    "display",
    "module",
    "which",
]

T = TypeVar("T")

Publish = Callable[[str, dict[str, Any]], None]
"""``publish(topic, body)``: hands an event to the desktop's actor; never blocks, safe
only on the event loop's thread."""


class Refused(Exception):
    """A backend cannot run on this host; the message says why, for ``loom desktop
    check``."""


@dataclass(frozen=True)
class Choice:
    """One backend of one source, as ``loom desktop check`` reports it."""

    source: str
    backend: str
    refused: str | None = None
    """Why it cannot run here (``None``: it can)."""
    chosen: bool = False
    tried: bool = True
    """False: not tried, as an earlier backend runs."""


class Source(Protocol):
    """A running source: publishes until stopped."""

    backend: str

    async def start(self, publish: Publish) -> None:
        """Start publishing; raise :class:`Refused` when it cannot."""

    async def stop(self) -> None:
        """Stop publishing and let go of what it holds (grabs, watches, processes)."""

    def status(self) -> dict[str, Any]:
        """What it does now and what went wrong, for ``desktop.status``."""


def display() -> str:
    """``$DISPLAY``.

    Raises:
        Refused: it is not set (no X server to talk to).
    """
    name = os.environ.get("DISPLAY", "")
    if not name:
        raise Refused("$DISPLAY is not set (no X server)")
    return name


def which(*programs: str) -> str:
    """The path of the first of ``programs`` on ``$PATH``.

    Raises:
        Refused: none of them is installed.
    """
    for program in programs:
        path = shutil.which(program)
        if path is not None:
            return path
    names = " or ".join(programs)
    hint = " (Debian: apt-get install xclip)" if "xclip" in programs else ""
    raise Refused(f"{names} not found on $PATH{hint}")


def module(name: str, extra: str = "desktop") -> Any:
    """Import an optional library.

    Raises:
        Refused: it is not installed (the message names the extra or package).
    """
    try:
        return __import__(name, fromlist=["_"])
    except ImportError as exc:
        hint = f"pip install 'loom-mesh[{extra}]'" if extra else f"pip install {name}"
        raise Refused(f"{name} is not installed ({hint}): {exc}") from None


IS_LINUX = sys.platform.startswith("linux")


def choose(
    source: str, wanted: Sequence[str], makers: Mapping[str, Callable[[], T]], every: bool
) -> tuple[T | None, list[Choice]]:
    """The first of ``wanted`` whose maker does not refuse, and a :class:`Choice` for
    each; the later ones are tried only when ``every`` (for ``loom desktop check``)."""
    tried: list[Choice] = []
    made: T | None = None
    for backend in wanted:
        if made is not None and not every:
            tried.append(Choice(source, backend, "not tried: an earlier backend runs", tried=False))
            continue
        try:
            candidate = makers[backend]()
        except Refused as exc:
            tried.append(Choice(source, backend, str(exc)))
        else:
            tried.append(Choice(source, backend, chosen=made is None))
            made = made if made is not None else candidate
    return made, tried
