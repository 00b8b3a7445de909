"""Key combinations: how people write them (``ctrl+alt+k``), and the one place that
turns a stream of key presses and releases into hotkeys, for every backend that sees raw
keys (``keyboard``, evdev, a test's scripted source). X11 grabs combinations instead, at
the server, and needs only :func:`parse_combo`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["MODIFIERS", "Combo", "ComboTracker", "key_name", "parse_combo"]

MODIFIERS = ("ctrl", "alt", "shift", "super")
"""In the order a combination is written back."""

_MODIFIER_ALIASES = {
    "ctrl": "ctrl",
    "control": "ctrl",
    "ctl": "ctrl",
    "alt": "alt",
    "option": "alt",
    "mod1": "alt",
    "shift": "shift",
    "super": "super",
    "win": "super",
    "windows": "super",
    "cmd": "super",
    "command": "super",
    "meta": "super",
    "logo": "super",
    "mod4": "super",
}

_KEY_ALIASES = {
    "return": "enter",
    "escape": "esc",
    "del": "delete",
    "ins": "insert",
    "pgup": "pageup",
    "prior": "pageup",
    "pgdn": "pagedown",
    "next": "pagedown",
    "spacebar": "space",
    " ": "space",
    "back": "backspace",
    "prtsc": "print",
    "printscreen": "print",
    "-": "minus",
    "=": "equal",
    ",": "comma",
    ".": "period",
    "/": "slash",
    "\\": "backslash",
    ";": "semicolon",
    "'": "apostrophe",
    "`": "grave",
    "[": "bracketleft",
    "]": "bracketright",
}

NAMED_KEYS = frozenset(
    {
        "space",
        "enter",
        "tab",
        "esc",
        "backspace",
        "delete",
        "insert",
        "home",
        "end",
        "pageup",
        "pagedown",
        "up",
        "down",
        "left",
        "right",
        "print",
        "pause",
        "menu",
        "minus",
        "equal",
        "comma",
        "period",
        "slash",
        "backslash",
        "semicolon",
        "apostrophe",
        "grave",
        "bracketleft",
        "bracketright",
    }
    | {f"f{n}" for n in range(1, 25)}
)
"""Keys besides letters and digits, by their canonical names."""

_MAX_DOWN = 32
"""Keys a tracker remembers as held (a stuck source cannot grow it)."""


@dataclass(frozen=True)
class Combo:
    """A combination: modifiers and one key, in canonical names."""

    modifiers: frozenset[str]
    key: str

    @property
    def text(self) -> str:
        """``ctrl+alt+k``: modifiers in a fixed order, then the key."""
        return "+".join([*(m for m in MODIFIERS if m in self.modifiers), self.key])


def key_name(text: str) -> str | None:
    """The canonical name of one key (``Return`` -> ``enter``, ``A`` -> ``a``), or of a
    modifier (``Control_L`` -> ``ctrl``); ``None`` if it is no key Loom names."""
    word = text.strip().lower().removeprefix("key_").strip("<>")
    for side in ("left ", "right ", "left", "right"):
        if word.startswith(side) and word[len(side) :] in _MODIFIER_ALIASES:
            word = word[len(side) :]
    for side in ("_l", "_r"):
        if word.endswith(side) and word[: -len(side)] in _MODIFIER_ALIASES:
            word = word[: -len(side)]
    if word in _MODIFIER_ALIASES:
        return _MODIFIER_ALIASES[word]
    word = _KEY_ALIASES.get(word, word.replace(" ", "").replace("_", ""))
    word = _KEY_ALIASES.get(word, word)
    if (len(word) == 1 and word.isascii() and word.isalnum()) or word in NAMED_KEYS:
        return word
    return None


def parse_combo(text: str) -> Combo:
    """``"ctrl+alt+k"`` (also ``<ctrl>+<alt>+k``, ``Control+Shift+F5``...) as a
    :class:`Combo`: any modifiers, then exactly one key.

    Raises:
        ValueError: an unknown key, no key, two keys, or a modifier twice.
    """
    parts = [part for part in text.split("+")]
    if text.endswith("++"):  # "ctrl++": the plus key is not nameable; say so plainly
        raise ValueError(f"{text!r}: write the key by name")
    modifiers: set[str] = set()
    key: str | None = None
    for part in parts:
        name = key_name(part)
        if name is None:
            raise ValueError(f"{text!r}: {part.strip()!r} is not a key Loom knows")
        if name in MODIFIERS:
            if name in modifiers:
                raise ValueError(f"{text!r}: {name} is written twice")
            modifiers.add(name)
        elif key is not None:
            raise ValueError(f"{text!r}: one key besides the modifiers, not {key} and {name}")
        else:
            key = name
    if key is None:
        raise ValueError(f"{text!r}: no key besides the modifiers")
    return Combo(frozenset(modifiers), key)


class ComboTracker:
    """Turns key presses and releases into hotkeys: a combination fires when its key goes
    down while exactly its modifiers are held. A held key's auto-repeat does not fire it
    again; keys it does not know are ignored (but still end a combination: ``ctrl+x+k``
    is not ``ctrl+k``).

    Args:
        combos: name -> combination.
        fire: called with the name and the combination, on the caller's thread.
    """

    def __init__(self, combos: dict[str, Combo], fire: Callable[[str, Combo], None]) -> None:
        self._by_key: dict[str, list[tuple[str, Combo]]] = {}
        for name, combo in combos.items():
            self._by_key.setdefault(combo.key, []).append((name, combo))
        self._fire = fire
        self._down: set[str] = set()
        self._others: set[str] = set()
        """Keys held that Loom has no name for (by the backend's own name)."""

    def press(self, key: str) -> None:
        """``key`` (a raw name, as the backend gives it) went down; again while held is
        the key's auto-repeat."""
        name = key_name(key)
        if name is None:
            if len(self._others) < _MAX_DOWN:
                self._others.add(key)
            return
        if name in self._down:
            return
        if len(self._down) >= _MAX_DOWN:  # missed releases: start afresh
            self._down.clear()
        held = {k for k in self._down if k in MODIFIERS}
        plain = len(self._down) - len(held) + len(self._others)
        self._down.add(name)
        if name in MODIFIERS or plain:
            return
        for hotkey, combo in self._by_key.get(name, ()):
            if combo.modifiers == held:
                self._fire(hotkey, combo)

    def release(self, key: str) -> None:
        """``key`` went up."""
        name = key_name(key)
        if name is None:
            self._others.discard(key)
        else:
            self._down.discard(name)

    def reset(self) -> None:
        """Forget what is held (the device went away)."""
        self._down.clear()
        self._others.clear()

    def feed(self, events: Iterable[tuple[str, bool]]) -> None:
        """``(key, down)`` pairs, in order."""
        for key, down in events:
            if down:
                self.press(key)
            else:
                self.release(key)
