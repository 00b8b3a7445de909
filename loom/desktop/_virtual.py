"""``VirtualDesktop``: a desktop session with no screen (Xvfb, a session bus, dunst), to
test desktop agents for real on a server or in CI."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["VirtualDesktop"]

PROGRAMS = {
    "Xvfb": "xvfb",
    "dbus-daemon": "dbus",
    "dunst": "dunst",
    "dunstctl": "dunst",
    "xclip": "xclip",
    "xdotool": "xdotool",
}
"""Program -> the Debian package that has it."""


class VirtualDesktop:
    """An X server on a free display (Xvfb), a session bus (dbus-daemon) and a
    notification server (dunst, with its default settings), for as long as it is open.
    ``env`` points programs at them (``DISPLAY``, ``DBUS_SESSION_BUS_ADDRESS``)::

        with VirtualDesktop() as desk:
            desk.run("xdotool", "key", "ctrl+alt+a")

    Raises:
        RuntimeError: a program is missing (the message names the Debian packages), or
            one of them did not start.
    """

    def __init__(self, *, screen: str = "1024x768x24", start_timeout: float = 15.0) -> None:
        missing = sorted({pkg for prog, pkg in PROGRAMS.items() if shutil.which(prog) is None})
        if missing:
            raise RuntimeError(f"apt-get install {' '.join(missing)}: the virtual desktop needs it")
        self._procs: list[subprocess.Popen[bytes]] = []
        self._dir = Path(tempfile.mkdtemp(prefix="loom-vdesk-"))
        try:
            self.display = self._xvfb(screen)
            self.bus = self._session_bus()
            self.env = {"DISPLAY": self.display, "DBUS_SESSION_BUS_ADDRESS": self.bus}
            self._dunst(start_timeout)
        except BaseException:
            self.close()
            raise

    def _spawn(self, argv: list[str], **options: Any) -> subprocess.Popen[bytes]:
        options.setdefault("stdout", subprocess.DEVNULL)
        proc = subprocess.Popen(argv, stderr=subprocess.DEVNULL, start_new_session=True, **options)
        self._procs.append(proc)
        return proc

    def _xvfb(self, screen: str) -> str:
        read, write = os.pipe()
        try:
            argv = ["Xvfb", "-displayfd", str(write), "-screen", "0", screen, "-nolisten", "tcp"]
            self._spawn(argv, pass_fds=(write,))
        finally:
            os.close(write)
        with os.fdopen(read) as told:
            number = told.readline().strip()
        if not number:
            raise RuntimeError("Xvfb did not start")
        return f":{number}"

    def _session_bus(self) -> str:
        bus = self._spawn(
            ["dbus-daemon", "--session", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
        )
        assert bus.stdout is not None
        address = bus.stdout.readline().decode().strip()
        bus.stdout.close()
        if not address:
            raise RuntimeError("dbus-daemon did not start")
        return address

    def _dunst(self, timeout: float) -> None:
        config = self._dir / "dunstrc"
        config.write_text("")  # its defaults, whatever the user's own file says
        self._spawn(["dunst", "-config", str(config)], env={**os.environ, **self.env})
        deadline = time.monotonic() + timeout
        while self.run("dunstctl", "is-paused", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("dunst did not start")
            time.sleep(0.02)

    def run(
        self, *argv: str, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a program in this session; its output."""
        return subprocess.run(
            argv,
            env={**os.environ, **self.env},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
            check=check,
        )

    def set_clipboard(self, text: str) -> None:
        """As a person's copy: ``xclip`` takes the clipboard (and stays to serve it)."""
        subprocess.run(
            ["xclip", "-selection", "clipboard", "-i"],
            input=text.encode(),
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
            check=True,
        )

    def clipboard(self) -> str:
        """The clipboard's text (``xclip -o``)."""
        return self.run("xclip", "-selection", "clipboard", "-o", check=False).stdout

    def press(self, combo: str) -> None:
        """Press and release a combination (``xdotool key ctrl+alt+a``)."""
        self.run("xdotool", "key", combo)

    def close(self) -> None:
        """Stop dunst, the bus and the X server."""
        for proc in reversed(self._procs):
            proc.terminate()
        for proc in reversed(self._procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> VirtualDesktop:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
