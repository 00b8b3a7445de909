"""``loom stats``: the broker's counters as JSON, or live per-topic rates (``--watch``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from loom._tables import format_table
from loom.protocol import STATS
from loom.session import ask

_CLEAR = "\x1b[H\x1b[2J"


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``loom stats`` to ``loom``'s parser."""
    stats = commands.add_parser(
        "stats",
        parents=[common],
        help="print the broker's counters as JSON, or live per-topic rates",
        epilog="examples:\n  loom stats                  # every counter, as JSON\n"
        "  loom stats --watch          # per-topic rates, refreshed each second\n"
        "  loom stats --watch 5 --top 10",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stats.add_argument(
        "--watch",
        nargs="?",
        const=1.0,
        type=float,
        metavar="SECONDS",
        help="show per-topic rates, refreshed every SECONDS (default 1), until Ctrl-C",
    )
    stats.add_argument("--top", type=int, default=20, help="topics shown, busiest first (20)")
    stats.add_argument("--count", type=int, default=0, help="stop after this many refreshes")
    stats.add_argument(
        "--all",
        action="store_true",
        help="also Loom's own reply and probe topics ($inbox.*, $probe.*)",
    )


async def show_stats(args: argparse.Namespace, broker: str) -> int:
    if args.watch is None:
        snapshot = await _snapshot(broker, args.timeout, everything=args.all)
        print(json.dumps(snapshot, indent=2, default=repr))
        return 0
    if args.watch <= 0 or args.top < 1:
        print("loom stats: --watch and --top need positive values", file=sys.stderr)
        return 2
    clear = sys.stdout.isatty()
    before, then = await _snapshot(broker, args.timeout, everything=args.all), time.monotonic()
    shown = 0
    while not args.count or shown < args.count:
        await asyncio.sleep(args.watch)  # the refresh interval, not a wait for a condition
        now, at = await _snapshot(broker, args.timeout, everything=args.all), time.monotonic()
        table = format_rates(before, now, at - then, args.top)
        print((_CLEAR if clear else "") + table, flush=True)
        before, then = now, at
        shown += 1
    return 0


PLUMBING = ("$inbox.", "$probe.")
"""Loom's own topics for replies and link probes: one per actor, noise in a table."""


async def _snapshot(broker: str, timeout: float, *, everything: bool) -> dict[str, Any]:
    """STATS, without the plumbing topics unless ``everything`` (the totals keep them)."""
    stats = await ask(broker, STATS, timeout=timeout)
    if not everything and isinstance(stats.get("topics"), dict):
        topics = stats["topics"]
        stats["topics"] = {t: c for t, c in topics.items() if not t.startswith(PLUMBING)}
    return stats


def format_rates(before: dict[str, Any], now: dict[str, Any], seconds: float, top: int) -> str:
    """Messages per second by topic between two STATS snapshots (busiest first), the
    totals, and tool calls."""
    old = before.get("topics", {})
    rows = []
    for topic, counters in now.get("topics", {}).items():
        previous = old.get(topic, {})
        rates = [  # a counter that went down: the broker restarted, count from zero
            _delta(counters.get(name, 0), previous.get(name, 0)) / seconds
            for name in ("published", "forwarded", "dropped", "malformed")
        ]
        rows.append((topic, rates))
    rows.sort(key=lambda row: (-row[1][0], row[0]))
    shown = [
        (topic, *(f"{rate:,.1f}" for rate in rates), f"{now['topics'][topic]['published']:,}")
        for topic, rates in rows[:top]
    ]
    header = ("TOPIC", "PUB/S", "FWD/S", "DROP/S", "BAD/S", "PUBLISHED")
    table = format_table(header, shown) if shown else "no topics yet"
    calls = now.get("tool_calls", {})
    made = _delta(calls.get("calls", 0), before.get("tool_calls", {}).get("calls", 0))
    lines = [
        f"loom stats: {len(rows)} topics, {made / seconds:,.1f} tool calls/s, "
        f"{len(now.get('peers', []))} peers",
        table,
    ]
    if len(rows) > top:
        lines.append(f"... and {len(rows) - top} quieter topics")
    return "\n".join(lines)


def _delta(now: int, before: int) -> int:
    return now - before if now >= before else now
