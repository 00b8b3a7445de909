"""An actor's handlers by pattern, with a per-topic cache of which handlers match."""

from __future__ import annotations

from typing import Generic, TypeVar

from loom.protocol import Pattern, decode_topic

__all__ = ["Router"]

H = TypeVar("H")
MAX_CACHE = 10_000


class Router(Generic[H]):
    """Patterns bound to handlers (any objects), with a per-topic cache of which handlers
    match (and of the topic's checked text)."""

    def __init__(self) -> None:
        self._routes: list[tuple[Pattern, H]] = []
        self._cache: dict[bytes, tuple[str, tuple[H, ...]]] = {}

    def add(self, pattern: str | Pattern, handler: H) -> Pattern:
        """Bind ``handler`` to ``pattern``; returns the compiled pattern.

        Raises:
            PatternError: the pattern is invalid.
        """
        compiled = pattern if isinstance(pattern, Pattern) else Pattern(pattern)
        self._routes.append((compiled, handler))
        self._cache.clear()
        return compiled

    def remove(self, pattern: str, handler: H | None = None) -> int:
        """Unbind ``handler`` (every handler, when ``None``) from the pattern written
        ``pattern``; returns how many bindings went."""
        kept = [
            (p, h)
            for p, h in self._routes
            if p.text != pattern or (handler is not None and h != handler)
        ]
        removed = len(self._routes) - len(kept)
        if removed:
            self._routes = kept
            self._cache.clear()
        return removed

    def route(self, topic: bytes) -> tuple[str, tuple[H, ...]]:
        """The text of ``topic`` (a topic frame from a peer) and the handlers it reaches,
        in binding order.

        Raises:
            ProtocolError: the frame is not a valid topic (``reason == "topic"``).
        """
        found = self._cache.get(topic)
        if found is None:
            text = decode_topic(topic)
            found = (text, tuple(h for p, h in self._routes if p.matches(text)))
            if len(self._cache) >= MAX_CACHE:
                self._cache.clear()
            self._cache[topic] = found
        return found

    def patterns(self) -> list[str]:
        """The bound patterns' texts, each once, in binding order."""
        return list(dict.fromkeys(p.text for p, _ in self._routes))

    def prefixes(self) -> set[bytes]:
        """The zmq subscription prefixes that cover every bound pattern."""
        return {p.prefix for p, _ in self._routes}
