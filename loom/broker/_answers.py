"""Keeping the broker's own answers bounded: what STATS, DIRECTORY, RECENT, TRACE, REPLAY
and APPROVALS send fits in one frame of the broker's limit (so the per-connection queue
bound holds for answers too), the expensive ones are built at most a few times a second,
and the scanning ones are rate-limited.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import msgspec

__all__ = ["Bucket", "Cached", "fit"]

T = TypeVar("T")
_size = msgspec.msgpack.Encoder().encode


def fit(entries: Iterable[T], budget: int) -> tuple[list[T], int]:
    """The first ``entries`` whose encoded sizes add up to at most ``budget`` bytes, and
    how many were left out."""
    kept: list[T] = []
    left = 0
    for entry in entries:
        if left:
            left += 1
            continue
        budget -= len(_size(entry))
        if budget < 0:
            left = 1
            continue
        kept.append(entry)
    return kept, left


class Cached:
    """A value rebuilt at most every ``ttl`` seconds (an answer many peers ask for).

    Args:
        build: makes the value.
        ttl: seconds a value is served again.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        build: Callable[[], dict[str, Any]],
        ttl: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._build = build
        self._ttl = ttl
        self._clock = clock
        self._value: dict[str, Any] = {}
        self._until = 0.0

    def get(self) -> dict[str, Any]:
        now = self._clock()
        if now >= self._until:
            self._value = self._build()
            self._until = now + self._ttl
        return self._value


class Bucket:
    """A token bucket: ``rate`` takes per second, ``burst`` at once.

    Args:
        rate: tokens added per second.
        burst: the most tokens held.
        clock: monotonic seconds.
    """

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock()

    def take(self) -> bool:
        """Whether a token was there (and is now taken)."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
