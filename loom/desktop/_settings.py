"""``[desktop]``: which sources ``loom desktop`` runs, with which backends, and what
each may publish. Light on purpose: no desktop library is imported here, so a settings
file is validated on any host.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    Field,
    NonNegativeFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from loom.config import Section

__all__ = [
    "ClipboardSettings",
    "DesktopSettings",
    "FilesSettings",
    "HotkeySettings",
    "NotifySettings",
    "TimerSettings",
    "TimersSettings",
    "WatchSettings",
    "check_cron",
    "zone",
]

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""A hotkey's, timer's or watch's name: one word of a topic."""

DEFAULT_SECRETS = (
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)",
    r"\bAKIA[0-9A-Z]{16}\b",
    r"\bgh[pousr]_[A-Za-z0-9]{36,}\b",
    r"\bsk-[A-Za-z0-9_-]{20,}\b",
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b",
    r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b",
)
"""What a secret looks like by default: PEM private keys (from BEGIN to END, or to the
end of a cut text), AWS access key ids, GitHub, OpenAI-style and Slack tokens, JSON web
tokens."""


def _names(table: Mapping[str, object], what: str) -> None:
    for name in table:
        if not NAME.match(name):
            raise ValueError(f"{what} {name!r}: use letters, digits, '_' or '-' (64 at most)")


def check_cron(expression: str) -> None:
    """Raises ValueError when ``expression`` is not a five-field cron expression (or
    cronsim is not installed)."""
    try:
        import cronsim
    except ImportError as exc:
        raise ValueError(f"cron needs cronsim (pip install 'loom-mesh[desktop]'): {exc}") from None
    if len(expression.split()) != 5:
        raise ValueError(f"cron {expression!r}: five fields (minute hour day month weekday)")
    try:
        cronsim.CronSim(expression, datetime.now().astimezone())
    except cronsim.CronSimError as exc:
        raise ValueError(f"cron {expression!r}: {exc}") from None


def zone(name: str | None) -> tzinfo:
    """The IANA zone ``name``, or the host's: ``$TZ``, else ``/etc/localtime``'s, as a
    zone with its daylight-saving rules (a fixed offset only when neither names one)."""
    if name is not None:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"time zone {name!r}: {exc}") from None
    named = os.environ.get("TZ", "").lstrip(":")
    with contextlib.suppress(ZoneInfoNotFoundError, ValueError, OSError):
        if named:
            return ZoneInfo(named)
        with open("/etc/localtime", "rb") as rules:
            return ZoneInfo.from_file(rules, key="localtime")
    local = datetime.now().astimezone().tzinfo
    assert local is not None
    return local


class HotkeySettings(Section):
    """``[desktop.hotkeys]``: global key combinations, published as
    ``desktop.hotkey.<name>``."""

    enabled: bool = True
    backend: Literal["auto", "x11", "keyboard", "evdev"] = "auto"
    """``auto``: X11 grabs when ``$DISPLAY`` is set, else the ``keyboard`` package where it
    works (Windows; root with ``/dev/input`` on Linux), else evdev."""
    keys: dict[str, str] = Field(default_factory=dict)
    """Name -> combination: ``{ask = "ctrl+alt+a"}``."""
    devices: list[str] = Field(default_factory=list)
    """evdev only: the input devices to read (default: every keyboard it may read)."""

    @field_validator("keys")
    @classmethod
    def _valid_keys(cls, keys: dict[str, str]) -> dict[str, str]:
        _names(keys, "hotkey")
        from loom.desktop._keys import parse_combo  # light: no desktop library

        seen: dict[str, str] = {}
        for name, text in keys.items():
            combo = parse_combo(text).text  # a ValueError names the bad part
            if combo in seen:
                raise ValueError(f"hotkeys {seen[combo]!r} and {name!r} are both {combo}")
            seen[combo] = name
        return keys


class ClipboardSettings(Section):
    """``[desktop.clipboard]``: the text clipboard, as ``desktop.clipboard.changed`` and the
    tools ``desktop.clipboard.get`` and ``desktop.clipboard.set``."""

    enabled: bool = True
    backend: Literal["auto", "x11", "poll"] = "auto"
    """``x11``: told of each change by the X server (XFixes), read and written with
    ``xclip``; ``poll``: read every ``poll`` seconds with the first of ``wl-paste``,
    ``xclip``, ``xsel``, ``pbpaste`` found (Wayland, macOS, X without XFixes)."""
    poll: float = Field(default=0.5, ge=0.05)
    max_bytes: PositiveInt = 65_536
    """Text longer than this (UTF-8 bytes) is cut to it; the event says ``truncated``."""
    publish_text: bool = True
    """``false``: ``desktop.clipboard.changed`` carries the size and a hash, not the text."""
    secrets: Literal["redact", "drop", "keep"] = "redact"
    """Text that looks like a secret (``secret_patterns``): ``redact`` publishes the event
    with each match replaced by ``[redacted]``, ``drop`` publishes no event, ``keep``
    publishes it as it is. ``desktop.clipboard.get`` always returns the real text."""
    secret_patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_SECRETS))
    readers: list[str] = Field(default_factory=lambda: ["local"])
    """Identities that may call ``desktop.clipboard.get`` (default: the owner only; ``*``:
    whoever the broker lets call it)."""
    writers: list[str] = Field(default_factory=lambda: ["local"])
    """Identities that may call ``desktop.clipboard.set``."""

    @field_validator("secret_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"secret pattern {pattern!r}: {exc}") from None
        return patterns


class WatchSettings(Section):
    """One ``[desktop.files.watch.NAME]``: a folder whose changes are published."""

    path: Path
    globs: list[str] = Field(default_factory=lambda: ["*"])
    """Shell-style patterns of the path relative to the folder (a pattern without ``/``
    matches the file's name)."""
    ignore: list[str] = Field(default_factory=list)
    """Patterns left out, after ``globs`` (editor swap files, ``.git`` and the like are
    always left out)."""
    recursive: bool = True


class FilesSettings(Section):
    """``[desktop.files]``: folders watched through inotify (``watchfiles``), published as
    ``desktop.file.created``, ``.modified``, ``.deleted`` and ``.moved``."""

    enabled: bool = True
    debounce_ms: PositiveInt = 50
    """Changes are published once the folder has been quiet this long (``watchfiles``'
    ``step``; its own default of 1.6 s is too slow for people)."""
    max_wait_ms: PositiveInt = 1000
    """A stream of changes is published at least this often."""
    max_files: PositiveInt = 200_000
    """Files remembered (their inode, to tell a move from a delete and a create)."""
    watch: dict[str, WatchSettings] = Field(default_factory=dict)

    @field_validator("watch")
    @classmethod
    def _valid_watch(cls, watch: dict[str, WatchSettings]) -> dict[str, WatchSettings]:
        _names(watch, "watch")
        return watch


class TimerSettings(Section):
    """One ``[desktop.timers.NAME]``: ``every`` seconds, or a ``cron`` expression."""

    every: float | None = Field(default=None, ge=0.1, le=1e9)
    """Seconds between runs (0.1 at least)."""
    cron: str | None = None
    """Five fields (minute hour day month weekday), in ``tz``: ``"0 18 * * mon-fri"``."""
    tz: str | None = None
    """An IANA zone (``Europe/Paris``); default: the host's."""
    missed: Literal["once", "skip", "all"] = "once"
    """Runs that came due while Loom was stopped or the host asleep: ``once`` fires one
    event for all of them (``skipped`` counts the rest), ``skip`` fires none, ``all``
    fires each (100 at most)."""
    grace: NonNegativeFloat = 60.0
    """Seconds late a run may fire and still count as on time."""
    data: dict[str, object] = Field(default_factory=dict)
    """Added to each event's body."""

    @model_validator(mode="after")
    def _one_schedule(self) -> TimerSettings:
        if (self.every is None) == (self.cron is None):
            raise ValueError("a timer needs exactly one of every (seconds) and cron")
        if self.cron is not None:
            check_cron(self.cron)
        if self.tz is not None:
            zone(self.tz)
        return self


class TimersSettings(Section):
    """``[desktop.timers]``: the timers (each a ``[desktop.timer.NAME]``) as a whole; the
    last run of each is kept, so a restart neither fires twice nor forgets a missed run."""

    enabled: bool = True
    state: Path | None = None
    """The file the last runs are kept in (default: ``desktop/timers-<name>.json`` in
    the Loom home)."""


class NotifySettings(Section):
    """``[desktop.notify]``: the ``desktop.notify`` tool, and ``desktop.notification.*``
    events for the actions people click."""

    enabled: bool = True
    backend: Literal["auto", "dbus", "plyer"] = "auto"
    """``dbus``: the freedesktop Notifications service on the session bus (Linux, BSD);
    ``plyer``: macOS and Windows (no actions)."""
    app_name: str = Field(default="Loom", max_length=200)
    max_tracked: PositiveInt = 1000
    """Notifications whose actions are still listened for (the oldest are forgotten)."""


class DesktopSettings(Section):
    """``[desktop]``: the sources and tools of ``loom desktop``."""

    name: str = Field(default="desktop", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """The worker's and the actor's name on the mesh."""
    hotkeys: HotkeySettings = HotkeySettings()
    clipboard: ClipboardSettings = ClipboardSettings()
    files: FilesSettings = FilesSettings()
    timers: TimersSettings = TimersSettings()
    timer: dict[str, TimerSettings] = Field(default_factory=dict)
    """``[desktop.timer.NAME]``: ``desktop.timer.<name>`` on a schedule."""
    notify: NotifySettings = NotifySettings()

    @field_validator("timer")
    @classmethod
    def _valid_timers(cls, timers: dict[str, TimerSettings]) -> dict[str, TimerSettings]:
        _names(timers, "timer")
        return timers
