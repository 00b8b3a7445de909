"""Hotkeys where no X server grabs them: the combination grammar, the tracker that the
`keyboard` and evdev backends feed with raw presses (tested here with the names each of
those libraries gives, since neither can run on a host without /dev/input), and a Desktop
with the scripted, in-memory sources on a real broker."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from conftest import until

from loom import Actor
from loom.desktop import (
    ComboTracker,
    Desktop,
    DesktopSettings,
    HotkeySettings,
    MemoryClipboard,
    MemoryNotifier,
    ScriptedKeys,
    parse_combo,
)
from loom.desktop._hotkeys import choose_hotkeys

pytestmark = pytest.mark.timeout(60)


def test_combinations_are_read_in_any_spelling() -> None:
    assert parse_combo("ctrl+alt+k").text == "ctrl+alt+k"
    assert parse_combo("<ctrl>+<alt>+K").text == "ctrl+alt+k"
    assert parse_combo("Control+Shift+F5").text == "ctrl+shift+f5"
    assert parse_combo("super+shift+Return").text == "shift+super+enter"
    assert parse_combo("cmd+space").text == "super+space"
    assert parse_combo("ctrl+/").text == "ctrl+slash"
    assert parse_combo("f12").modifiers == frozenset()


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("ctrl+alt", "no key besides the modifiers"),
        ("ctrl+a+b", "one key besides the modifiers, not a and b"),
        ("ctrl+ctrl+a", "ctrl is written twice"),
        ("ctrl+hyperdrive", "'hyperdrive' is not a key Loom knows"),
        ("ctrl++", "write the key by name"),
        ("", "'' is not a key"),
    ],
)
def test_bad_combinations_say_what_is_wrong(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("+", r"\+")):
        parse_combo(text)


def test_two_hotkeys_on_one_combination_are_a_conflict_in_the_settings() -> None:
    with pytest.raises(ValueError, match="hotkeys 'a' and 'b' are both ctrl\\+alt\\+k"):
        HotkeySettings(keys={"a": "ctrl+alt+k", "b": "<ctrl>+<alt>+K"})
    with pytest.raises(ValueError, match="hotkey 'no spaces'"):
        HotkeySettings(keys={"no spaces": "ctrl+k"})


def _tracker() -> tuple[ComboTracker, list[str]]:
    fired: list[str] = []
    combos = {"ask": parse_combo("ctrl+alt+a"), "plain": parse_combo("f9")}
    return ComboTracker(combos, lambda name, combo: fired.append(name)), fired


@pytest.mark.parametrize(
    "names",
    [
        ("left ctrl", "alt", "a"),  # the keyboard package's names
        ("KEY_LEFTCTRL", "KEY_RIGHTALT", "KEY_A"),  # evdev's
        ("Control_R", "Alt_L", "a"),  # X keysym names
    ],
)
def test_the_tracker_fires_a_combination_from_raw_presses(names: tuple[str, ...]) -> None:
    tracker, fired = _tracker()
    ctrl, alt, a = names
    tracker.feed([(ctrl, True), (alt, True), (a, True), (a, True), (a, True)])  # auto-repeat
    assert fired == ["ask"]
    tracker.feed([(a, False), (a, True)])  # released and pressed again, modifiers held
    assert fired == ["ask", "ask"]
    tracker.feed([(a, False), (alt, False), (a, True)])  # ctrl+a: not a hotkey
    assert fired == ["ask", "ask"]


def test_the_tracker_wants_exactly_the_combinations_modifiers() -> None:
    tracker, fired = _tracker()
    tracker.feed([("ctrl", True), ("alt", True), ("shift", True), ("a", True)])
    assert fired == []  # ctrl+alt+shift+a is another combination
    tracker.reset()
    tracker.feed([("ctrl", True), ("alt", True), ("x", True), ("a", True)])
    assert fired == []  # x held: not the combination
    tracker.reset()
    tracker.feed([("ctrl", True), ("alt", True), ("some-odd-key", True), ("a", True)])
    assert fired == []  # an unknown key held counts as held
    tracker.feed([("some-odd-key", True), ("some-odd-key", True)])  # its auto-repeat
    tracker.feed([("some-odd-key", False), ("a", False), ("a", True)])
    assert fired == ["ask"]  # one release ends a held key, however often it repeated
    tracker.reset()
    tracker.feed([("f9", True), ("f9", False)])
    assert fired == ["ask", "plain"]


def test_a_stuck_source_cannot_grow_the_tracker() -> None:
    tracker, _ = _tracker()
    tracker.feed((f"f{n % 24 + 1}", True) for n in range(10_000))
    tracker.feed((chr(ord("a") + n % 26), True) for n in range(10_000))
    tracker.feed((f"odd-{n}", True) for n in range(10_000))
    assert len(tracker._down) <= 32
    assert len(tracker._others) <= 32


def test_the_keyboard_and_evdev_backends_say_why_they_cannot_run_here() -> None:
    _, tried = choose_hotkeys(HotkeySettings(backend="keyboard", keys={"a": "ctrl+a"}))
    (keyboard,) = tried
    assert keyboard.refused is not None
    assert any(
        part in keyboard.refused
        for part in ("needs root on Linux", "needs /dev/input", "keyboard is not installed")
    )
    made, tried = choose_hotkeys(HotkeySettings(backend="evdev", keys={"a": "ctrl+a"}))
    assert made is None
    assert tried[0].refused is not None and "evdev" in tried[0].refused


def test_a_desktop_with_scripted_sources_serves_a_real_mesh(mesh: str, tmp_path: Path) -> None:
    settings = DesktopSettings.model_validate(
        {"name": "test-desktop", "hotkeys": {"keys": {"ask": "ctrl+alt+a"}}}
    )
    keys = ScriptedKeys(settings.hotkeys)
    clipboard = MemoryClipboard(settings.clipboard)
    notifier = MemoryNotifier(settings.notify)

    async def go() -> None:
        desktop = Desktop(
            settings,
            broker=mesh,
            hotkeys=keys,
            clipboard=clipboard,
            notifier=notifier,
            state=tmp_path,
        )
        got: list[tuple[str, Any]] = []
        actor = Actor(name="watcher", broker=mesh)
        await desktop.start()
        await actor.start()
        try:
            await actor.subscribe("desktop.**", lambda e: got.append((e.topic, e.data)))
            keys.tap("ctrl+alt+a")
            await clipboard.write("copied")
            await until(lambda: len(got) == 2)
            assert got[0][0] == "desktop.hotkey.ask"
            assert got[0][1]["backend"] == "scripted"
            assert got[1][0] == "desktop.clipboard.changed"
            assert got[1][1]["text"] == "copied"
            assert (await actor.tool("desktop.clipboard.get"))["text"] == "copied"

            shown = await actor.tool(
                "desktop.notify", {"title": "Hi", "actions": {"ok": "OK"}, "tag": "x"}
            )
            assert notifier.shown[-1] == {
                "id": shown["id"],
                "title": "Hi",
                "body": "",
                "urgency": "normal",
                "actions": {"ok": "OK"},
            }
            notifier.click(shown["id"], "ok")
            await until(lambda: len(got) == 3)
            assert got[2] == (
                "desktop.notification.action",
                got[2][1] | {"id": shown["id"], "action": "ok", "tag": "x"},
            )
            notifier.click(999, "ok")  # not ours: no event
            assert notifier.clicked == 1
            status = await actor.tool("desktop.status")
            backends = {name: s["backend"] for name, s in status["sources"].items()}
            assert backends == {"hotkeys": "scripted", "clipboard": "memory", "notify": "memory"}
            assert len(got) == 3
        finally:
            await actor.stop()
            await desktop.stop()

    asyncio.run(go())
