"""A fixed-bucket histogram: counts per bucket and the sum, as Prometheus keeps them."""

from __future__ import annotations

import bisect

__all__ = ["Histogram"]


class Histogram:
    """Counts per bucket (``counts[i]``: values up to ``bounds[i]``; the last counts the
    rest, ``+Inf``) and the sum of the values observed.

    Args:
        bounds: the buckets' upper bounds, ascending.
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count one value (one bisect and two additions)."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        """``(upper bound, values up to it)`` pairs ending with ``+Inf``, for Prometheus
        (from a copy of the counts: safe while another thread observes)."""
        return cumulative(self.bounds, list(self.counts))


def cumulative(
    bounds: tuple[float, ...], counts: list[int] | list[float]
) -> list[tuple[str, float]]:
    """Per-bucket counts as Prometheus' cumulative ``(le, count)`` pairs."""
    pairs, running = [], 0.0
    for bound, count in zip((*map(str, bounds), "+Inf"), counts, strict=True):
        running += count
        pairs.append((bound, running))
    return pairs
