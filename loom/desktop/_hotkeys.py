"""Hotkeys: global key combinations as ``desktop.hotkey.<name>`` events.

Backends, tried in this order by ``auto``:

- ``x11``: python-xlib grabs each combination on the root window (as window managers
  do), so the keys reach Loom whichever window has the focus, and no other program sees
  them. A combination another program grabbed first is reported as a conflict.
- ``keyboard``: the ``keyboard`` package's global hook (Windows; on Linux it needs root
  and ``/dev/input``).
- ``evdev``: reads the keyboards under ``/dev/input`` (Linux; the user must be allowed to
  read them, usually the ``input`` group). Works without X, under Wayland too.
- ``scripted`` (:class:`ScriptedKeys`): keys a program feeds in, for tests.

The last three see raw presses and releases; :class:`~loom.desktop._keys.ComboTracker`
turns those into hotkeys, the same code for each.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Any

from loom.desktop._keys import Combo, ComboTracker, parse_combo
from loom.desktop._settings import HotkeySettings
from loom.desktop._source import IS_LINUX, Choice, Publish, Refused, choose, module
from loom.desktop._x11 import XLink
from loom.logs import get_logger

__all__ = ["BACKENDS", "Hotkeys", "ScriptedKeys", "choose_hotkeys"]

BACKENDS = ("x11", "keyboard", "evdev")

_X_KEYSYMS = {
    "space": "space",
    "enter": "Return",
    "tab": "Tab",
    "esc": "Escape",
    "backspace": "BackSpace",
    "delete": "Delete",
    "insert": "Insert",
    "home": "Home",
    "end": "End",
    "pageup": "Prior",
    "pagedown": "Next",
    "up": "Up",
    "down": "Down",
    "left": "Left",
    "right": "Right",
    "print": "Print",
    "pause": "Pause",
    "menu": "Menu",
} | {f"f{n}": f"F{n}" for n in range(1, 25)}

log = get_logger("loom.desktop")


def _combos(settings: HotkeySettings) -> dict[str, Combo]:
    return {name: parse_combo(text) for name, text in settings.keys.items()}


class Hotkeys:
    """The hotkey source over one backend: what every backend publishes, and how.

    Subclasses start their backend in :meth:`_open` and call :meth:`fire`.
    """

    backend = "none"

    def __init__(self, settings: HotkeySettings) -> None:
        self.combos = _combos(settings)
        self.settings = settings
        self.conflicts: dict[str, str] = {}
        """Name -> why that combination could not be had."""
        self.fired = 0
        self._publish: Publish | None = None

    async def start(self, publish: Publish) -> None:
        self._publish = publish
        await self._open()
        for name, why in self.conflicts.items():
            log.warning("hotkey not available", hotkey=name, reason=why)

    async def _open(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        self._publish = None

    def fire(self, name: str, combo: Combo) -> None:
        """Publish ``desktop.hotkey.<name>`` (on the event loop's thread)."""
        if self._publish is None:
            return
        self.fired += 1
        body = {"name": name, "combo": combo.text, "backend": self.backend, "at": time.time()}
        self._publish(f"desktop.hotkey.{name}", body)

    def status(self) -> dict[str, Any]:
        keys = {name: combo.text for name, combo in self.combos.items()}
        return {"keys": keys, "conflicts": dict(self.conflicts), "fired": self.fired}


class X11Hotkeys(Hotkeys):
    """Grabs on the X server's root window, read on the event loop. A key held down
    repeats as a release and a press with one timestamp: the press of such a pair is not
    a new hotkey (so two real presses of one key within a millisecond, which only a
    program can make, count once). A keyboard mapping change grabs again."""

    backend = "x11"

    def __init__(self, settings: HotkeySettings) -> None:
        super().__init__(settings)
        self.link = XLink("hotkeys", self._events)
        self._grabs: list[tuple[int, int]] = []
        self._by_grab: dict[tuple[int, int], tuple[str, Combo]] = {}
        self._codes: dict[str, int] = {}
        self._released: tuple[int, int] | None = None
        """The last release's (keycode, server time): a press of that key at that same
        millisecond is its auto-repeat (the two may come in two reads, under load)."""

    @staticmethod
    def probe() -> None:
        """Raises :class:`Refused` when no X server answers here."""
        XLink.probe().close()

    async def _open(self) -> None:
        self.link.open()
        self._grab()
        self.link.watch()

    def _keycodes(self) -> dict[str, int]:
        """Each hotkey's keycode in the current keyboard mapping (0: none)."""
        from Xlib import XK

        d = self.link.display
        codes = {}
        for name, combo in self.combos.items():
            keysym = XK.string_to_keysym(_X_KEYSYMS.get(combo.key, combo.key))
            codes[name] = d.keysym_to_keycode(keysym) if keysym else 0
        return codes

    def _grab(self) -> None:
        from Xlib import X, error

        d = self.link.display
        root = d.screen().root
        self._codes = self._keycodes()
        masks = {"ctrl": X.ControlMask, "alt": X.Mod1Mask, "shift": X.ShiftMask}
        masks["super"] = X.Mod4Mask
        locks = (0, X.LockMask, X.Mod2Mask, X.LockMask | X.Mod2Mask)  # caps, num lock
        self._relevant = X.ControlMask | X.Mod1Mask | X.ShiftMask | X.Mod4Mask
        self.conflicts.clear()
        for name, combo in self.combos.items():
            keycode = self._codes[name]
            if not keycode:
                self.conflicts[name] = f"{combo.key}: no such key on this keyboard"
                continue
            mask = 0
            for modifier in combo.modifiers:
                mask |= masks[modifier]
            catch = error.CatchError(error.BadAccess)
            grabbed = [(keycode, mask | lock) for lock in locks]
            for code, full in grabbed:
                root.grab_key(code, full, True, X.GrabModeAsync, X.GrabModeAsync, onerror=catch)
            d.sync()
            if catch.get_error() is not None:
                for code, full in grabbed:
                    root.ungrab_key(code, full)
                self.conflicts[name] = f"{combo.text} is taken by another program"
                continue
            self._grabs += grabbed
            self._by_grab[(keycode, mask)] = (name, combo)
        d.sync()

    def _ungrab(self) -> None:
        root = self.link.display.screen().root
        for code, mask in self._grabs:
            root.ungrab_key(code, mask)
        self._grabs.clear()
        self._by_grab.clear()

    def _events(self, events: list[Any]) -> None:
        from Xlib import X

        for event in events:
            if event.type == X.KeyPress:
                if (event.detail, event.time) == self._released:
                    continue  # auto-repeat: the key never went up
                hit = self._by_grab.get((event.detail, event.state & self._relevant))
                if hit is not None:
                    self.fire(*hit)
            elif event.type == X.KeyRelease:
                self._released = (event.detail, event.time)
            elif event.type == X.MappingNotify:
                self.link.display.refresh_keyboard_mapping(event)
                if event.request == X.MappingKeyboard and self._keycodes() != self._codes:
                    self._ungrab()  # another layout moved our keys: grab them anew
                    self._grab()

    async def stop(self) -> None:
        await super().stop()
        if self.link.display is not None and self.link.lost is None:
            with contextlib.suppress(Exception):
                self._ungrab()
        self.link.close()

    def status(self) -> dict[str, Any]:
        return super().status() | {"lost": self.link.lost}


class TrackedHotkeys(Hotkeys):
    """A backend that sees raw presses and releases, through a :class:`ComboTracker`."""

    def __init__(self, settings: HotkeySettings) -> None:
        super().__init__(settings)
        self.tracker = ComboTracker(self.combos, self.fire)


class ScriptedKeys(TrackedHotkeys):
    """Keys fed in by a program: the injectable source for tests, and for hosts where no
    real backend runs. ``press("ctrl")``, ``press("k")``, ``release(...)``, or
    ``tap("ctrl+alt+k")``; call them on the event loop's thread."""

    backend = "scripted"

    async def _open(self) -> None:
        pass

    def press(self, key: str) -> None:
        self.tracker.press(key)

    def release(self, key: str) -> None:
        self.tracker.release(key)

    def tap(self, combo: str) -> None:
        """Press the combination's modifiers and key, then release them all."""
        parsed = parse_combo(combo)
        keys = [*sorted(parsed.modifiers), parsed.key]
        for key in keys:
            self.tracker.press(key)
        for key in reversed(keys):
            self.tracker.release(key)


class KeyboardHotkeys(TrackedHotkeys):
    """The ``keyboard`` package's global hook: its callbacks run on its own thread and are
    handed to the event loop."""

    backend = "keyboard"

    def __init__(self, settings: HotkeySettings) -> None:
        super().__init__(settings)
        self.probe()
        self._keyboard = module("keyboard", extra="")
        self._hook: Any = None

    @staticmethod
    def probe() -> None:
        if IS_LINUX:
            if os.geteuid() != 0:
                raise Refused("the keyboard package needs root on Linux")
            if not Path("/dev/input").is_dir():
                raise Refused("the keyboard package needs /dev/input, and there is none")
        module("keyboard", extra="")

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()

        def seen(event: Any) -> None:  # the package's thread
            down = event.event_type == "down"
            step = self.tracker.press if down else self.tracker.release
            loop.call_soon_threadsafe(step, str(event.name or ""))

        try:
            self._hook = self._keyboard.hook(seen)
        except Exception as exc:  # ImportError("You must be root"), OSError
            raise Refused(f"the keyboard package cannot hook the keys: {exc}") from None

    async def stop(self) -> None:
        await super().stop()
        if self._hook is not None:
            with contextlib.suppress(Exception):
                self._keyboard.unhook(self._hook)
            self._hook = None


class EvdevHotkeys(TrackedHotkeys):
    """Reads keyboards from ``/dev/input/event*`` with python-evdev, one task each."""

    backend = "evdev"

    def __init__(self, settings: HotkeySettings) -> None:
        super().__init__(settings)
        self._evdev = module("evdev", extra="")
        self.paths = self.keyboards(self._evdev, settings.devices)
        self.devices: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []

    @staticmethod
    def keyboards(evdev: Any, wanted: list[str]) -> list[str]:
        """The devices to read: ``wanted``, else each readable one with letter keys.

        Raises:
            Refused: none can be read.
        """
        paths = wanted or sorted(str(p) for p in Path("/dev/input").glob("event*"))
        found, errors = [], []
        for path in paths:
            try:
                device = evdev.InputDevice(path)
            except OSError as exc:
                errors.append(f"{path}: {exc.strerror}")
                continue
            with contextlib.closing(device):
                keys = device.capabilities().get(evdev.ecodes.EV_KEY, [])
                if wanted or evdev.ecodes.KEY_A in keys:
                    found.append(path)
        if not found:
            why = "; ".join(errors[:3]) or "no keyboard under /dev/input"
            raise Refused(f"no keyboard evdev may read ({why})")
        return found

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        self.devices = [self._evdev.InputDevice(path) for path in self.paths]
        self._tasks = [loop.create_task(self._read(device)) for device in self.devices]

    async def _read(self, device: Any) -> None:
        ecodes = self._evdev.ecodes
        try:
            async for event in device.async_read_loop():
                if event.type != ecodes.EV_KEY or event.value == 2:  # 2: auto-repeat
                    continue
                names = ecodes.KEY.get(event.code) or ecodes.BTN.get(event.code) or ""
                name = names[0] if isinstance(names, list) else names
                if event.value:
                    self.tracker.press(name)
                else:
                    self.tracker.release(name)
        except OSError as exc:  # unplugged
            log.warning("keyboard gone", device=device.path, error=str(exc))
            self.tracker.reset()

    async def stop(self) -> None:
        await super().stop()
        for task in self._tasks:
            task.cancel()
        for device in self.devices:
            with contextlib.suppress(Exception):
                device.close()


def choose_hotkeys(
    settings: HotkeySettings, *, every: bool = False
) -> tuple[Hotkeys | None, list[Choice]]:
    """The hotkey backend to use here, and what was tried (with why each was refused).

    ``None`` when the source is off, has no keys, or no backend can run.
    """
    if not settings.enabled:
        return None, [Choice("hotkeys", "-", "switched off ([desktop.hotkeys] enabled)")]
    if not settings.keys:
        return None, [Choice("hotkeys", "-", "no keys configured ([desktop.hotkeys.keys])")]
    wanted = BACKENDS if settings.backend == "auto" else (settings.backend,)

    def x11() -> Hotkeys:
        X11Hotkeys.probe()
        return X11Hotkeys(settings)

    makers = {"x11": x11, "keyboard": lambda: KeyboardHotkeys(settings)}
    makers["evdev"] = lambda: EvdevHotkeys(settings)
    return choose("hotkeys", wanted, makers, every)
