"""What the desktop tests share: a real X server (Xvfb), a session bus (dbus-daemon) and a
notification server (dunst) for the session (`loom.desktop.VirtualDesktop`), a
`loom desktop` process, and an actor that collects the desktop's events.

The programs come from Debian (xvfb, dbus, dunst, xclip, xdotool); scripts/check installs
them with scripts/install-test-packages when they are missing.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Proc

from loom import Actor
from loom.desktop import VirtualDesktop


@pytest.fixture(scope="session")
def xsession() -> Iterator[VirtualDesktop]:
    """One X server, session bus and dunst for every desktop test."""
    with VirtualDesktop() as session:
        yield session


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
