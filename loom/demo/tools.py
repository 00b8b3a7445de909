"""The demo's tools, served by one worker: harmless arithmetic on the demo's prices."""

from __future__ import annotations

import statistics

from loom.tools import tool


@tool(name="demo.stats", idempotent=True)
def stats(values: list[float]) -> dict[str, float]:
    """Summary statistics of a series of prices.

    Args:
        values: the prices, oldest first (at least one).
    """
    if not values:
        raise ValueError("values is empty")
    return {
        "mean": round(statistics.fmean(values), 4),
        "low": min(values),
        "high": max(values),
        "change_pct": round(100 * (values[-1] / values[0] - 1), 4) if values[0] else 0.0,
    }


@tool(name="demo.risk", idempotent=True)
async def risk(symbol: str, position: int, action: str, limit: int = 3) -> dict[str, object]:
    """Check a trade against a position limit.

    Args:
        symbol: what is traded.
        position: the position before the trade.
        action: buy, hold or sell.
        limit: the largest position allowed either way.
    """
    step = {"buy": 1, "hold": 0, "sell": -1}.get(action)
    if step is None:
        raise ValueError(f"unknown action {action!r}")
    after = position + step
    allowed = abs(after) <= limit
    return {"symbol": symbol, "allowed": allowed, "position_after": after if allowed else position}


TOOLS = [stats, risk]
