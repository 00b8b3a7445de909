"""The clipboard: each change of its text as ``desktop.clipboard.changed``, and the text
read and written for the ``desktop.clipboard.get`` and ``.set`` tools.

Backends, tried in this order by ``auto``:

- ``x11``: the X server tells Loom when the clipboard changes hands (the XFixes
  extension, through python-xlib), so nothing polls; the text is read and written with
  ``xclip``.
- ``poll``: the text is read every ``poll`` seconds with the first of ``wl-paste``
  (Wayland), ``xclip``, ``xsel`` (X) or ``pbpaste`` (macOS) found, and written with its
  pair (``wl-copy``, ``xclip``, ``xsel``, ``pbcopy``).
- ``memory`` (:class:`MemoryClipboard`): a clipboard a program sets, for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import sys
import time
from typing import Any, ClassVar, NamedTuple

from loom.desktop._settings import ClipboardSettings
from loom.desktop._source import Choice, Publish, Refused, choose, which
from loom.desktop._x11 import XLink
from loom.logs import get_logger

__all__ = ["BACKENDS", "Clip", "Clipboard", "MemoryClipboard", "choose_clipboard"]

BACKENDS = ("x11", "poll")
_COMMAND_TIMEOUT = 3.0
_MAX_COUNTED = 1 << 30
"""Bytes of a huge clipboard counted (not kept) at most, to give its size."""
_OWN_WINDOW = 5.0
"""Seconds a change that matches what ``desktop.clipboard.set`` wrote counts as its own."""

log = get_logger("loom.desktop")


class Clip(NamedTuple):
    """The clipboard's text, cut to ``max_bytes``, and its whole size in UTF-8 bytes."""

    text: str
    size: int

    @property
    def truncated(self) -> bool:
        return self.size > len(self.text.encode("utf-8", "replace"))


def cut(text: str, max_bytes: int) -> tuple[str, bool]:
    """``text`` cut to ``max_bytes`` of UTF-8 (at a character boundary); and whether it
    was cut."""
    data = text.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return text, False
    return data[:max_bytes].decode("utf-8", "ignore"), True


class Clipboard:
    """The clipboard source over one backend. Subclasses read and write the text and call
    :meth:`changed` when it may have changed."""

    backend = "none"

    def __init__(self, settings: ClipboardSettings) -> None:
        self.settings = settings
        self._secrets = [re.compile(p) for p in settings.secret_patterns]
        self._key = secrets.token_bytes(32)
        """Keys the published digests: equal texts are told apart from different ones
        within one run, but a digest says nothing about a short text (a password)."""
        self._publish: Publish | None = None
        self._last: bytes | None = None
        self._written: tuple[bytes, float] | None = None
        self.changes = 0
        self.withheld = 0

    async def start(self, publish: Publish) -> None:
        await self._open()
        with contextlib.suppress(Exception):  # what is there now is no change
            self._last = self._digest(await self.read())
        self._publish = publish

    async def _open(self) -> None:
        pass

    async def stop(self) -> None:
        self._publish = None

    async def read(self) -> Clip:
        """The clipboard's text now, cut to ``max_bytes`` (``""`` when it holds no text)."""
        raise NotImplementedError

    async def write(self, text: str) -> None:
        raise NotImplementedError

    async def set(self, text: str) -> None:
        self._written = (self._digest(self._clip(text)), time.monotonic())
        await self.write(text)

    def _digest(self, clip: Clip) -> bytes:
        """What tells one clipboard from another (of a cut text: its kept part and size),
        keyed per run (HMAC-SHA256)."""
        data = clip.text.encode("utf-8", "replace") + clip.size.to_bytes(8, "little")
        return hmac.new(self._key, data, hashlib.sha256).digest()

    def _clip(self, text: str) -> Clip:
        return Clip(cut(text, self.settings.max_bytes)[0], len(text.encode("utf-8", "replace")))

    async def changed(self) -> None:
        """Read the text; publish it when it differs from the last."""
        try:
            clip = await self.read()
        except Exception as exc:  # a backend's command failed: the next change may work
            log.warning("clipboard not read", backend=self.backend, error=str(exc))
            return
        self.notice(clip)

    def notice(self, clip: Clip) -> None:
        """Publish ``clip`` if it is a change."""
        digest = self._digest(clip)
        if digest == self._last or self._publish is None:
            return
        self._last = digest
        self.changes += 1
        settings = self.settings
        shown = clip.text
        body: dict[str, Any] = {
            "bytes": clip.size,
            "truncated": clip.truncated,
            "digest": digest.hex()[:32],
            "backend": self.backend,
            "own": self._written is not None
            and self._written[0] == digest
            and time.monotonic() - self._written[1] < _OWN_WINDOW,
            "at": time.time(),
        }
        if settings.secrets != "keep":
            redacted = 0
            for pattern in self._secrets:
                shown, n = pattern.subn("[redacted]", shown)
                redacted += n
            if redacted and settings.secrets == "drop":
                self.withheld += 1
                return
            body["redacted"] = redacted
        if settings.publish_text:
            body["text"] = shown
        self._publish("desktop.clipboard.changed", body)

    def status(self) -> dict[str, Any]:
        return {"changes": self.changes, "withheld": self.withheld}


class CommandClipboard(Clipboard):
    """Reads and writes through the clipboard programs of the host."""

    _PAIRS: ClassVar[dict[str, tuple[list[str], list[str]]]] = {  # reader: (read, write)
        "wl-paste": (["wl-paste", "--no-newline"], ["wl-copy"]),
        "xclip": (["xclip", "-selection", "clipboard", "-o"], ["xclip", "-selection", "clipboard"]),
        "xsel": (["xsel", "--clipboard", "--output"], ["xsel", "--clipboard", "--input"]),
        "pbpaste": (["pbpaste"], ["pbcopy"]),
    }

    def __init__(self, settings: ClipboardSettings, programs: tuple[str, ...]) -> None:
        super().__init__(settings)
        path = which(*programs)
        self.program = os.path.basename(path)
        self._read_argv, self._write_argv = self._PAIRS[self.program]

    async def read(self) -> Clip:
        proc = await asyncio.create_subprocess_exec(
            *self._read_argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        limit = self.settings.max_bytes
        data, size = b"", 0
        try:  # keep max_bytes (and a bit: a character cut in half), count the rest
            async with asyncio.timeout(_COMMAND_TIMEOUT):
                data = await proc.stdout.readexactly(limit + 4)
        except asyncio.IncompleteReadError as short:
            data = short.partial
        except TimeoutError:
            data = b""
        size = len(data)
        killed = False
        try:
            async with asyncio.timeout(_COMMAND_TIMEOUT):
                while chunk := await proc.stdout.read(1 << 16):
                    size += len(chunk)
                    if size >= _MAX_COUNTED:
                        break
                else:
                    await proc.wait()
        except TimeoutError:
            pass
        finally:
            if proc.returncode is None:
                killed = True
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if killed and data:  # more than we count, or slower than we wait: it was cut
            size = max(size, len(data) + 1)
        elif proc.returncode != 0:  # an empty clipboard, no text in it, or no answer
            return Clip("", 0)
        text, _ = cut(data.decode("utf-8", "ignore" if size > len(data) else "replace"), limit)
        return Clip(text, size)

    async def write(self, text: str) -> None:
        # xclip and xsel stay behind to serve the selection: in a session of their own,
        # so stopping Loom's process group does not empty the clipboard, and with no pipe
        # of ours open (one would never reach its end)
        proc = await asyncio.create_subprocess_exec(
            *self._write_argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(_COMMAND_TIMEOUT):
                await proc.communicate(text.encode("utf-8"))
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if proc.returncode:
            raise OSError(f"{self.program} could not set the clipboard (exit {proc.returncode})")


class PollClipboard(CommandClipboard):
    """Reads the clipboard every ``poll`` seconds."""

    backend = "poll"

    def __init__(self, settings: ClipboardSettings) -> None:
        programs: tuple[str, ...] = ()
        if os.environ.get("WAYLAND_DISPLAY"):
            programs += ("wl-paste",)
        if os.environ.get("DISPLAY"):
            programs += ("xclip", "xsel")
        if sys.platform == "darwin":
            programs += ("pbpaste",)
        if not programs:
            raise Refused("neither $WAYLAND_DISPLAY nor $DISPLAY is set, and this is not macOS")
        super().__init__(settings, programs)
        if self.program == "wl-paste":
            which("wl-copy")
        self._task: asyncio.Task[None] | None = None

    async def start(self, publish: Publish) -> None:
        await super().start(publish)
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll)
            await self.changed()

    async def stop(self) -> None:
        await super().stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class X11Clipboard(CommandClipboard):
    """Told of each change by the X server (XFixes selection events on the event loop),
    read and written with ``xclip``."""

    backend = "x11"

    def __init__(self, settings: ClipboardSettings) -> None:
        self.probe()
        super().__init__(settings, ("xclip",))
        self.link = XLink("clipboard", self._events)
        self._reading: asyncio.Task[None] | None = None
        self._again = False

    @staticmethod
    def probe() -> None:
        d = XLink.probe()
        try:
            if not d.has_extension("XFIXES"):
                raise Refused("the X server lacks the XFIXES extension (use backend poll)")
        finally:
            d.close()
        which("xclip")

    async def _open(self) -> None:
        from Xlib.ext import xfixes

        d = self.link.open()
        d.xfixes_query_version()
        clipboard = d.intern_atom("CLIPBOARD")
        mask = xfixes.XFixesSetSelectionOwnerNotifyMask
        d.xfixes_select_selection_input(d.screen().root, clipboard, mask)
        d.sync()
        self.link.watch()

    def _events(self, events: list[Any]) -> None:
        """Only owner changes were asked for: any batch means one read."""
        if self._reading is not None and not self._reading.done():
            self._again = True  # one more read after the one running
            return
        self._reading = asyncio.get_running_loop().create_task(self._read_all())

    async def _read_all(self) -> None:
        while True:
            self._again = False
            await self.changed()
            if not self._again:
                return

    async def stop(self) -> None:
        await super().stop()
        if self._reading is not None:
            self._reading.cancel()
        self.link.close()

    def status(self) -> dict[str, Any]:
        return super().status() | {"lost": self.link.lost}


class MemoryClipboard(Clipboard):
    """A clipboard held in memory: ``await clipboard.set(text)`` changes it (as a user's
    copy would), for tests and hosts without one."""

    backend = "memory"

    def __init__(self, settings: ClipboardSettings | None = None) -> None:
        super().__init__(settings or ClipboardSettings())
        self.text = ""

    async def read(self) -> Clip:
        return self._clip(self.text)

    async def write(self, text: str) -> None:
        self.text = text
        self.notice(self._clip(text))


def choose_clipboard(
    settings: ClipboardSettings, *, every: bool = False
) -> tuple[Clipboard | None, list[Choice]]:
    """The clipboard backend to use here, and what was tried."""
    if not settings.enabled:
        return None, [Choice("clipboard", "-", "switched off ([desktop.clipboard] enabled)")]
    wanted = BACKENDS if settings.backend == "auto" else (settings.backend,)
    makers = {"x11": lambda: X11Clipboard(settings), "poll": lambda: PollClipboard(settings)}
    return choose("clipboard", wanted, makers, every)
