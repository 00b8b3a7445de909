"""Tool-call outcomes and latencies by tool, kept by the router for ``/metrics``.

Recording is one dict update and one bisect per answered call; the Prometheus text is
made only when someone scrapes. Distinct tools are capped: past the cap, new tools share
the ``(other)`` row, so memory stays bounded whatever names callers invent.
"""

from __future__ import annotations

from loom._histogram import Histogram

__all__ = ["BUCKETS", "ToolMetrics"]

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Upper bounds of the latency buckets, seconds (``+Inf`` follows)."""


class ToolMetrics:
    """Outcomes (``ok`` or a failure code) and latencies per tool.

    Args:
        max_tools: distinct tool names kept before new ones count as ``(other)``.
    """

    def __init__(self, max_tools: int = 1000) -> None:
        self.outcomes: dict[tuple[str, str], int] = {}
        self.latency: dict[str, Histogram] = {}
        self._max = max_tools

    def record(self, tool: str, outcome: str, seconds: float) -> None:
        """Count one answered call."""
        if tool not in self.latency and len(self.latency) >= self._max:
            tool = "(other)"
        key = (tool, outcome)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        latency = self.latency.get(tool)
        if latency is None:
            latency = self.latency[tool] = Histogram(BUCKETS)
        latency.observe(max(seconds, 0.0))
