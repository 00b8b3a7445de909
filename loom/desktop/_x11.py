"""One connection to the X server, read on the event loop: its socket is watched, so
nothing polls, and a server that goes away is noticed and said once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from loom.desktop._source import Refused, display, module
from loom.logs import get_logger

__all__ = ["XLink"]

log = get_logger("loom.desktop")


class XLink:
    """A python-xlib display whose events go to ``on_events`` in batches (a batch: what
    the socket had; a key's auto-repeat arrives as a release and a press together)."""

    def __init__(self, what: str, on_events: Callable[[list[Any]], None]) -> None:
        self.what = what
        self.on_events = on_events
        self.display: Any = None
        self.lost: str | None = None
        """Why the connection ended (``None``: it did not)."""
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None

    @staticmethod
    def probe() -> Any:
        """A display opened and closed, or :class:`Refused` saying why not."""
        name = display()
        xlib = module("Xlib.display")
        try:
            return xlib.Display(name)
        except Exception as exc:  # DisplayError, ConnectionClosedError, OSError
            raise Refused(f"cannot open X display {name}: {exc}") from None

    def open(self) -> Any:
        """Connect (not yet read: :meth:`watch`).

        Raises:
            Refused: no X server answers.
        """
        self.display = self.probe()
        self._fd = self.display.fileno()
        return self.display

    def watch(self) -> None:
        """Read the events on the running loop from now on."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._drain)

    def _drain(self) -> None:
        events = []
        try:
            while self.display.pending_events():
                events.append(self.display.next_event())
        except Exception as exc:  # the server went away (the socket is closed by now)
            self.lost = str(exc) or type(exc).__name__
            log.error("x server connection lost", source=self.what, error=self.lost)
            self._unwatch()
        if not events:
            return
        try:
            self.on_events(events)
        except Exception as exc:  # a bug in a handler must not stop the reading
            log.error("x events not handled", source=self.what, error=str(exc), exc_info=exc)

    def _unwatch(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._fd)  # by the number kept: fileno() may raise
            self._loop = None

    def close(self) -> None:
        """Stop reading and disconnect."""
        self._unwatch()
        if self.display is not None:
            with contextlib.suppress(Exception):
                self.display.close()
            self.display = None
