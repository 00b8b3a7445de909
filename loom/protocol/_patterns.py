"""Topic patterns: dot-separated tokens where ``*`` is one token and ``**`` any number.

ZeroMQ filters by byte prefix, so an actor subscribes to each pattern's longest literal
prefix (``Pattern.prefix``) and matches the full pattern itself.

A wildcard in the first position never matches a topic starting with ``$`` (``$sys``,
``$inbox``...): those are reached only by naming them.

Matching runs a small NFA over the topic's tokens, its states a bit set: one step per
token whatever the pattern, so a hostile pattern (``a.**.**.**.z``) or topic costs no
more than a plain one. Patterns and topics are bounded (``MAX_TOPIC_BYTES``,
``MAX_TOKENS``), so the sets stay a couple of machine words.
"""

from __future__ import annotations

from loom.errors import PatternError
from loom.protocol._envelope import MAX_TOKENS, MAX_TOPIC_BYTES

__all__ = ["Pattern"]


class Pattern:
    """A compiled subscription pattern.

    Raises:
        PatternError: empty, longer than ``MAX_TOPIC_BYTES`` or ``MAX_TOKENS`` tokens, an
            empty token, or ``*`` inside a token (``pri*``).
    """

    __slots__ = ("_accept", "_deep", "_literal", "_one", "_start", "prefix", "text", "tokens")

    def __init__(self, text: str) -> None:
        if not isinstance(text, str) or not text:
            raise PatternError(f"pattern must be a non-empty string, not {text!r}")
        if len(text.encode()) > MAX_TOPIC_BYTES:
            raise PatternError(f"pattern is longer than {MAX_TOPIC_BYTES} bytes")
        tokens = tuple(text.split("."))
        if len(tokens) > MAX_TOKENS:
            raise PatternError(f"pattern has {len(tokens)} tokens (limit {MAX_TOKENS})")
        for token in tokens:
            if not token:
                raise PatternError(f"pattern {text[:80]!r} has an empty token")
            if "*" in token and token not in ("*", "**"):
                raise PatternError(f"pattern {text[:80]!r}: '*' must be a whole token")
        self.text = text
        self.tokens = tokens
        self.prefix = _literal_prefix(tokens)
        """The bytes to subscribe to at the zmq level."""
        self._compile(tokens)

    def _compile(self, tokens: tuple[str, ...]) -> None:
        """The NFA: state ``i`` means "the first ``i`` steps matched". Adjacent ``**``
        say no more than one, so they are collapsed (one closure step then suffices)."""
        steps: list[str] = []
        for token in tokens:
            if not (token == "**" and steps and steps[-1] == "**"):
                steps.append(token)
        literal: dict[str, int] = {}
        one = deep = 0
        for i, step in enumerate(steps):
            if step == "*":
                one |= 1 << i
            elif step == "**":
                deep |= 1 << i
            else:
                literal[step] = literal.get(step, 0) | 1 << i
        self._literal = literal
        """Per literal token, the states whose step it satisfies."""
        self._one = one
        """States whose step is ``*``."""
        self._deep = deep
        """States whose step is ``**`` (it may take a token and stay, or take none)."""
        self._start = 1 | (1 & deep) << 1
        self._accept = 1 << len(steps)

    def matches(self, topic: str) -> bool:
        """Whether ``topic`` matches this pattern (linear in the topic's tokens)."""
        if topic.startswith("$") and self.tokens[0] in ("*", "**"):
            return False
        literal, one, deep = self._literal, self._one, self._deep
        states = self._start
        for token in topic.split("."):
            states = (states & deep) | (states & (one | literal.get(token, 0))) << 1
            if not states:
                return False
            states |= (states & deep) << 1  # a ``**`` may also match no token
        return bool(states & self._accept)

    def __repr__(self) -> str:
        return f"Pattern({self.text!r})"


def _literal_prefix(tokens: tuple[str, ...]) -> bytes:
    for i, token in enumerate(tokens):
        if token == "*":
            return ".".join(tokens[:i]).encode() + (b"." if i else b"")
        if token == "**":  # may match zero tokens: "a.**" matches "a" itself
            return ".".join(tokens[:i]).encode()
    return ".".join(tokens).encode()
