"""What the desktop tests share: a real X server (Xvfb), a session bus (dbus-daemon) and a
notification server (dunst) for the session, a `loom desktop` process, and an actor that
collects the desktop's events.

The programs come from Debian (xvfb, dbus, dunst, xclip, xdotool); scripts/check installs
them with scripts/install-test-packages when they are missing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Proc, wait_for

from loom import Actor

PROGRAMS = ("Xvfb", "dbus-daemon", "dunst", "dunstctl", "xclip", "xdotool")


class XSession:
    """An X display, a session bus on it and dunst; ``env`` points programs at them."""

    def __init__(self, tmp: Path) -> None:
        missing = [p for p in PROGRAMS if shutil.which(p) is None]
        assert not missing, f"{missing} missing: run scripts/install-test-packages"
        self.procs: list[subprocess.Popen[bytes]] = []
        read, write = os.pipe()
        xvfb = subprocess.Popen(
            ["Xvfb", "-displayfd", str(write), "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
            pass_fds=(write,),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(write)
        self.procs.append(xvfb)
        with os.fdopen(read) as display:
            number = display.readline().strip()
        assert number, "Xvfb gave no display number"
        self.display = f":{number}"
        bus = subprocess.Popen(
            ["dbus-daemon", "--session", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(bus)
        assert bus.stdout is not None
        self.bus = bus.stdout.readline().decode().strip()
        assert self.bus, "dbus-daemon gave no address"
        self.env = {"DISPLAY": self.display, "DBUS_SESSION_BUS_ADDRESS": self.bus}
        empty = tmp / "dunstrc"
        empty.write_text("")  # the defaults, whatever the user's own file says
        dunst = subprocess.Popen(
            ["dunst", "-config", str(empty)],
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(dunst)
        wait_for(lambda: self.run("dunstctl", "is-paused", check=False).returncode == 0, 15)

    def run(self, *argv: str, check: bool = True, stdin: str | None = None) -> Any:
        """A program on this display and bus; its completed process."""
        return subprocess.run(
            argv,
            env={**os.environ, **self.env},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=20,
            check=check,
        )

    def set_clipboard(self, text: str) -> None:
        """As a user's copy: xclip owns the clipboard (it stays behind to serve it)."""
        subprocess.run(
            ["xclip", "-selection", "clipboard", "-i"],
            input=text.encode(),
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=20,
            check=True,
        )

    def clipboard(self) -> str:
        return str(self.run("xclip", "-selection", "clipboard", "-o").stdout)

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture(scope="session")
def xsession(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XSession]:
    """One X server, session bus and dunst for every desktop test."""
    session = XSession(tmp_path_factory.mktemp("xsession"))
    yield session
    session.close()


def start_desktop(
    spawn: Callable[..., Proc],
    mesh: str,
    config: str,
    tmp: Path,
    env: dict[str, str] | None = None,
) -> Proc:
    """``loom desktop --config FILE`` (the file written from ``config``) once ready."""
    path = tmp / "desktop.toml"
    path.write_text(config)
    command = [sys.executable, "-m", "loom.cli.main", "desktop", "--config", str(path)]
    proc = spawn(*command, "--broker", mesh, env=env)
    proc.wait_line("desktop ready", timeout=20)
    return proc


class Events:
    """The events an actor got, in order of arrival."""

    def __init__(self) -> None:
        self.got: list[tuple[str, Any, float]] = []

    def handle(self, event: Any) -> None:
        self.got.append((event.topic, event.data, time.monotonic()))

    def on(self, topic: str) -> list[Any]:
        return [data for t, data, _ in self.got if t == topic]

    def topics(self) -> list[str]:
        return [t for t, _, _ in self.got]

    async def wait(self, topic: str, count: int = 1, timeout: float = 10.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while len(found := self.on(topic)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} x {topic} not seen in {timeout}s: {self.got}")
            await asyncio.sleep(0.005)
        return found


def watching(mesh: str, pattern: str, body: Callable[[Actor, Events], Awaitable[Any]]) -> Any:
    """Run ``body(actor, events)`` with an actor that collects ``pattern``'s events."""

    async def go() -> Any:
        events = Events()
        actor = Actor(name="watcher", broker=mesh)
        await actor.start()
        try:
            await actor.subscribe(pattern, events.handle)
            return await body(actor, events)
        finally:
            await actor.stop()

    return asyncio.run(go())
