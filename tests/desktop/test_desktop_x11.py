"""`loom desktop` on a real X server (Xvfb) with a real session bus and dunst: keys
pressed with xdotool, the clipboard set with xclip, notifications shown by dunst and
clicked with dunstctl, each reaching an actor through a real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Proc, eventually, free_tcp_endpoint, wait_for
from desktop_helpers import start_desktop, watching, xsession

from loom import Actor
from loom.desktop import VirtualDesktop
from loom.errors import ToolDeniedError

__all__ = ["xsession"]  # the fixture, imported for pytest

pytestmark = pytest.mark.timeout(90)

KEYS = """
[desktop.hotkeys.keys]
ask = "ctrl+alt+a"
shout = "super+shift+F5"
"""


@pytest.fixture
def endpoint() -> str:
    return free_tcp_endpoint()


ask_again = "desktop.hotkey.ask"


def test_a_key_pressed_with_xdotool_is_a_hotkey_event(
    spawn: Callable[..., Proc], mesh: str, xsession: VirtualDesktop, tmp_path: Path
) -> None:
    start_desktop(spawn, mesh, KEYS, tmp_path, env=xsession.env)

    async def body(actor: Actor, events: Any) -> None:
        xsession.run("xdotool", "key", "ctrl+a")  # not a hotkey: no one grabbed it
        xsession.run("xdotool", "key", "ctrl+alt+a")
        (ask,) = await events.wait("desktop.hotkey.ask")
        assert ask["name"] == "ask"
        assert ask["combo"] == "ctrl+alt+a"
        assert ask["backend"] == "x11"
        xsession.run("xdotool", "key", "super+shift+F5")
        (shout,) = await events.wait("desktop.hotkey.shout")
        assert shout["combo"] == "shift+super+f5"
        xsession.run("xdotool", "key", "ctrl+alt+a")  # with num lock on, it still counts
        await events.wait("desktop.hotkey.ask", 2)
        assert events.topics() == ["desktop.hotkey.ask", "desktop.hotkey.shout", ask_again]

    watching(mesh, "desktop.hotkey.*", body)


def test_a_held_hotkey_fires_once_however_long_it_repeats(
    spawn: Callable[..., Proc], mesh: str, xsession: VirtualDesktop, tmp_path: Path
) -> None:
    start_desktop(spawn, mesh, KEYS, tmp_path, env=xsession.env)

    async def body(actor: Actor, events: Any) -> None:
        # held for a second: the X server repeats it (after 660 ms, 25 a second)
        xsession.run("xdotool", "keydown", "ctrl+alt+a", "sleep", "1.2", "keyup", "ctrl+alt+a")
        xsession.run("xdotool", "key", "super+shift+F5")  # a marker: all before it is in
        await events.wait("desktop.hotkey.shout")
        assert events.topics() == ["desktop.hotkey.ask", "desktop.hotkey.shout"]

    watching(mesh, "desktop.hotkey.*", body)


def test_a_combination_another_program_holds_is_a_reported_conflict(
    spawn: Callable[..., Proc], mesh: str, xsession: VirtualDesktop, tmp_path: Path
) -> None:
    from Xlib import XK, X, display

    other = display.Display(xsession.display)  # another program grabs ctrl+alt+g first
    root = other.screen().root
    code = other.keysym_to_keycode(XK.string_to_keysym("g"))
    root.grab_key(code, X.ControlMask | X.Mod1Mask, True, X.GrabModeAsync, X.GrabModeAsync)
    other.sync()
    try:
        config = KEYS + 'taken = "ctrl+alt+g"\n'
        desktop = start_desktop(spawn, mesh, config, tmp_path, env=xsession.env)
        assert "hotkey not available" in desktop.output

        async def body(actor: Actor, events: Any) -> None:
            status = await actor.tool("desktop.status")
            hotkeys = status["sources"]["hotkeys"]
            assert hotkeys["conflicts"] == {"taken": "ctrl+alt+g is taken by another program"}
            xsession.run("xdotool", "key", "ctrl+alt+a")  # the others still work
            await events.wait("desktop.hotkey.ask")

        watching(mesh, "desktop.hotkey.*", body)
    finally:
        other.close()


CLIPBOARD = """
[desktop.clipboard]
max_bytes = 200
"""


def test_the_clipboard_set_with_xclip_is_an_event_and_the_tools_read_and_write_it(
    spawn: Callable[..., Proc], mesh: str, xsession: VirtualDesktop, tmp_path: Path
) -> None:
    start_desktop(spawn, mesh, CLIPBOARD, tmp_path, env=xsession.env)

    async def body(actor: Actor, events: Any) -> None:
        xsession.set_clipboard("hello from xclip")
        (changed,) = await events.wait("desktop.clipboard.changed")
        assert changed["text"] == "hello from xclip"
        assert changed["backend"] == "x11"
        assert changed["own"] is False
        got = await actor.tool("desktop.clipboard.get")
        assert got == {"text": "hello from xclip", "bytes": 16, "truncated": False}

        await actor.tool("desktop.clipboard.set", {"text": "written by a tool"})
        wait_for(lambda: xsession.clipboard() == "written by a tool")
        changed = (await events.wait("desktop.clipboard.changed", 2))[1]
        assert changed["text"] == "written by a tool"
        assert changed["own"] is True  # what the tool wrote, seen coming back

        secret = "key: ghp_" + "a" * 36 + " end"
        xsession.set_clipboard(secret)
        changed = (await events.wait("desktop.clipboard.changed", 3))[2]
        assert changed["text"] == "key: [redacted] end"
        assert changed["redacted"] == 1
        assert (await actor.tool("desktop.clipboard.get"))["text"] == secret  # the owner's

        xsession.set_clipboard("é" * 150)  # 300 bytes: cut to 200, at a character
        changed = (await events.wait("desktop.clipboard.changed", 4))[3]
        assert changed["truncated"] is True
        assert changed["text"] == "é" * 100
        assert changed["bytes"] == 300

    watching(mesh, "desktop.clipboard.*", body)


def test_only_the_listed_identities_may_read_the_clipboard(
    spawn: Callable[..., Proc], mesh: str, xsession: VirtualDesktop, tmp_path: Path
) -> None:
    config = '[desktop.clipboard]\nreaders = ["alice"]\nwriters = ["local"]\n'
    start_desktop(spawn, mesh, config, tmp_path, env=xsession.env)

    async def body(actor: Actor, events: Any) -> None:
        with pytest.raises(ToolDeniedError, match="local may not read the clipboard"):
            await actor.tool("desktop.clipboard.get")
        await actor.tool("desktop.clipboard.set", {"text": "the owner writes"})

    watching(mesh, "desktop.clipboard.*", body)


def test_the_poll_backend_sees_the_clipboard_change_too(
    spawn: Callable[..., Proc], mesh: str, xsession: VirtualDesktop, tmp_path: Path
) -> None:
    config = '[desktop.clipboard]\nbackend = "poll"\npoll = 0.1\n'
    start_desktop(spawn, mesh, config, tmp_path, env=xsession.env)

    async def body(actor: Actor, events: Any) -> None:
        xsession.set_clipboard("polled text")
        (changed,) = await events.wait("desktop.clipboard.changed")
        assert changed["text"] == "polled text"
        assert changed["backend"] == "poll"

    watching(mesh, "desktop.clipboard.*", body)


def test_notify_reaches_dunst_and_a_click_comes_back_as_an_event(
    spawn: Callable[..., Proc], mesh: str, xsession: VirtualDesktop, tmp_path: Path
) -> None:
    start_desktop(spawn, mesh, "", tmp_path, env=xsession.env)
    xsession.run("dunstctl", "close-all")

    def displayed() -> int:
        return int(xsession.run("dunstctl", "count", "displayed").stdout)

    async def body(actor: Actor, events: Any) -> None:
        shown = await actor.tool(
            "desktop.notify",
            {
                "title": "Summary ready",
                "body": "3 notes",
                "urgency": "critical",
                "actions": {"default": "Open", "later": "Later"},
                "tag": "summary-1",
            },
        )
        assert shown["backend"] == "dbus"
        assert shown["actions"] is True
        wait_for(lambda: displayed() == 1)
        xsession.run("dunstctl", "action", "0")  # a click on the notification
        (action,) = await events.wait("desktop.notification.action")
        assert action == action | {"id": shown["id"], "action": "default", "tag": "summary-1"}

        _spoof_click(xsession, shown["id"], "default")  # another program on the bus

        async def refused() -> bool:
            status = await actor.tool("desktop.status")
            return bool(status["sources"]["notify"]["refused"] == 1)

        await eventually(refused)
        assert len(events.on("desktop.notification.action")) == 1

        second = await actor.tool("desktop.notify", {"title": "Dismiss me", "tag": "t2"})
        wait_for(lambda: displayed() >= 1)
        xsession.run("dunstctl", "close-all")
        closed = await events.wait("desktop.notification.closed", 2)
        assert {c["id"] for c in closed} == {shown["id"], second["id"]}
        assert {c["tag"] for c in closed} == {"summary-1", "t2"}
        history = json.loads(xsession.run("dunstctl", "history").stdout)
        summaries = {n["summary"]["data"] for n in history["data"][0]}
        assert {"Summary ready", "Dismiss me"} <= summaries

    watching(mesh, "desktop.notification.*", body)


def _spoof_click(xsession: VirtualDesktop, ident: int, key: str) -> None:
    """Emit ActionInvoked as some other program on the session bus would."""
    from jeepney import DBusAddress, new_signal
    from jeepney.io.blocking import open_dbus_connection

    path, name = "/org/freedesktop/Notifications", "org.freedesktop.Notifications"
    env = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    os.environ["DBUS_SESSION_BUS_ADDRESS"] = xsession.bus
    try:
        with open_dbus_connection(bus="SESSION") as bus:
            emitter = DBusAddress(path, interface=name)
            bus.send(new_signal(emitter, "ActionInvoked", "us", (ident, key)))
    finally:
        if env is None:
            del os.environ["DBUS_SESSION_BUS_ADDRESS"]
        else:
            os.environ["DBUS_SESSION_BUS_ADDRESS"] = env


def test_check_reports_the_backends_and_why_others_were_refused(
    xsession: VirtualDesktop, tmp_path: Path
) -> None:
    config = tmp_path / "desktop.toml"
    config.write_text(KEYS)
    command = [sys.executable, "-m", "loom.cli.main", "desktop", "check", "--config", str(config)]
    bare = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "DBUS_SESSION_BUS_ADDRESS")}
    rows = json.loads(
        subprocess.run([*command, "--json"], env=bare, capture_output=True, check=True).stdout
    )
    why = {(r["source"], r["backend"]): r["why"] for r in rows}
    assert why[("hotkeys", "x11")] == "$DISPLAY is not set (no X server)"
    assert why[("clipboard", "poll")].startswith("neither $WAYLAND_DISPLAY nor $DISPLAY")
    assert why[("notify", "dbus")].startswith("no session bus")
    assert not any(r["chosen"] for r in rows if r["source"] in ("hotkeys", "clipboard"))

    found = xsession.run(*command, "--json")
    chosen = {r["source"]: r["backend"] for r in json.loads(found.stdout) if r["chosen"]}
    assert chosen == {"hotkeys": "x11", "clipboard": "x11", "notify": "dbus"}
    table = xsession.run(*command).stdout  # the table people read
    assert "hotkeys    uses  x11" in table
    assert "clipboard    ok  poll" in table
