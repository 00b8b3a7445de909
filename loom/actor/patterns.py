"""Topic patterns: dot-separated tokens where ``*`` is one token and ``**`` any number.

ZeroMQ filters by byte prefix, so an actor subscribes to each pattern's longest literal
prefix and matches the full pattern here; the decision is cached per topic.

A wildcard in the first position never matches a topic starting with ``$`` (``$sys``,
``$inbox``...): those are reached only by naming them.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from loom.errors import PatternError

__all__ = ["Pattern", "Router"]

H = TypeVar("H")
MAX_CACHE = 10_000


class Pattern:
    """A compiled subscription pattern.

    Raises:
        PatternError: empty, an empty token, or ``*`` inside a token (``pri*``).
    """

    __slots__ = ("prefix", "text", "tokens")

    def __init__(self, text: str) -> None:
        if not isinstance(text, str) or not text:
            raise PatternError(f"pattern must be a non-empty string, not {text!r}")
        tokens = tuple(text.split("."))
        for token in tokens:
            if not token:
                raise PatternError(f"pattern {text!r} has an empty token")
            if "*" in token and token not in ("*", "**"):
                raise PatternError(f"pattern {text!r}: '*' must be a whole token ({token!r})")
        self.text = text
        self.tokens = tokens
        self.prefix = _literal_prefix(tokens)
        """The bytes to subscribe to at the zmq level."""

    def matches(self, topic: str) -> bool:
        """Whether ``topic`` matches this pattern."""
        parts = topic.split(".")
        if topic.startswith("$") and self.tokens[0] in ("*", "**"):
            return False
        return _match(self.tokens, parts, 0, 0)

    def __repr__(self) -> str:
        return f"Pattern({self.text!r})"


def _literal_prefix(tokens: tuple[str, ...]) -> bytes:
    for i, token in enumerate(tokens):
        if token == "*":
            return ".".join(tokens[:i]).encode() + (b"." if i else b"")
        if token == "**":  # may match zero tokens: "a.**" matches "a" itself
            return ".".join(tokens[:i]).encode()
    return ".".join(tokens).encode()


def _match(pattern: tuple[str, ...], topic: list[str], i: int, j: int) -> bool:
    while i < len(pattern):
        token = pattern[i]
        if token == "**":
            if i == len(pattern) - 1:
                return True
            return any(_match(pattern, topic, i + 1, k) for k in range(j, len(topic) + 1))
        if j >= len(topic) or (token != "*" and token != topic[j]):
            return False
        i += 1
        j += 1
    return j == len(topic)


class Router(Generic[H]):
    """Patterns bound to handlers (any objects), with a per-topic cache of which handlers match."""

    def __init__(self) -> None:
        self._routes: list[tuple[Pattern, H]] = []
        self._cache: dict[bytes, tuple[H, ...]] = {}

    def add(self, pattern: str | Pattern, handler: H) -> Pattern:
        """Bind ``handler`` to ``pattern``; returns the compiled pattern.

        Raises:
            PatternError: the pattern is invalid.
        """
        compiled = pattern if isinstance(pattern, Pattern) else Pattern(pattern)
        self._routes.append((compiled, handler))
        self._cache.clear()
        return compiled

    def match(self, topic: bytes) -> tuple[H, ...]:
        """The handlers for ``topic`` (a UTF-8 topic frame), in binding order."""
        handlers = self._cache.get(topic)
        if handlers is None:
            text = topic.decode(errors="replace")
            handlers = tuple(h for p, h in self._routes if p.matches(text))
            if len(self._cache) >= MAX_CACHE:
                self._cache.clear()
            self._cache[topic] = handlers
        return handlers

    def patterns(self) -> list[str]:
        """The bound patterns' texts, each once, in binding order."""
        return list(dict.fromkeys(p.text for p, _ in self._routes))

    def prefixes(self) -> set[bytes]:
        """The zmq subscription prefixes that cover every bound pattern."""
        return {p.prefix for p, _ in self._routes}
