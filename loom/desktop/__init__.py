"""The desktop on the mesh: hotkeys, the clipboard, watched folders and timers as topics,
the clipboard and notifications as tools (``loom desktop``; ``docs/desktop.md``).

Each source picks a backend the host offers (``loom desktop check`` says which, and why
the others were refused); tests and hosts without one pass a scripted or in-memory
backend to :class:`Desktop`.
"""

from loom.desktop._clipboard import Clipboard, MemoryClipboard
from loom.desktop._desktop import Desktop, check
from loom.desktop._hotkeys import Hotkeys, ScriptedKeys
from loom.desktop._keys import Combo, ComboTracker, parse_combo
from loom.desktop._notify import MemoryNotifier, Notifier
from loom.desktop._settings import (
    ClipboardSettings,
    DesktopSettings,
    FilesSettings,
    HotkeySettings,
    NotifySettings,
    TimerSettings,
    TimersSettings,
    WatchSettings,
)
from loom.desktop._source import Choice, Refused
from loom.desktop._timers import Schedule, Timers
from loom.desktop._virtual import VirtualDesktop

__all__ = [
    "Choice",
    "Clipboard",
    "ClipboardSettings",
    "Combo",
    "ComboTracker",
    "Desktop",
    "DesktopSettings",
    "FilesSettings",
    "HotkeySettings",
    "Hotkeys",
    "MemoryClipboard",
    "MemoryNotifier",
    "Notifier",
    "NotifySettings",
    "Refused",
    "Schedule",
    "ScriptedKeys",
    "TimerSettings",
    "Timers",
    "TimersSettings",
    "VirtualDesktop",
    "WatchSettings",
    "check",
    "parse_combo",
]
