"""``loom trace TRACE_ID``: the tree of one trace, with timings, from the broker's buffer."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from loom.errors import RefusedError
from loom.protocol import TRACE, kind_name
from loom.session import ask


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``loom trace`` to ``loom``'s parser."""
    trace = commands.add_parser(
        "trace",
        parents=[common],
        help="print one trace: the messages and tool calls it caused, with timings",
        epilog="example: loom tap --json ...  # each event's trace_id\n"
        "         loom trace 3f2a9c1e0b7d4a55e0c1d2b3a4f5e6d7\n"
        "         loom trace --thread order-1042     # a conversation, as one lane",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    trace.add_argument("trace_id", nargs="?", help="the trace id, hex (loom tap --json shows it)")
    trace.add_argument(
        "--thread", help="a conversation's thread id instead: its messages as one lane"
    )
    trace.add_argument("--json", action="store_true", help="the trace as JSON")


async def show_trace(args: argparse.Namespace, broker: str) -> int:
    """Exit 1 when the broker holds nothing of that trace or thread (any more), 2 when
    neither is given."""
    if (args.trace_id is None) == (args.thread is None):
        print("loom trace: give a trace id or --thread THREAD (one of them)", file=sys.stderr)
        return 2
    body = {"thread": args.thread} if args.thread is not None else {"trace": args.trace_id}
    what = args.thread if args.thread is not None else args.trace_id
    try:
        found = await ask(broker, TRACE, body, timeout=args.timeout)
    except RefusedError as exc:
        print(f"loom trace: {exc}", file=sys.stderr)
        return 2
    if not found["messages"] and not found["calls"]:
        print(f"loom trace: nothing of {what} in the broker's buffer", file=sys.stderr)
        return 1
    for message in found["messages"]:
        message["kind"] = kind_name(message.get("kind"))  # a name, as in every JSON output
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        print(format_lane(found) if args.thread is not None else format_trace(found))
    return 0


def format_lane(found: dict[str, Any]) -> str:
    """A thread's messages as one lane, in time order: milliseconds from the first, the
    sender, the kind, the topic (and the trace each belongs to)."""
    messages = sorted(found["messages"], key=lambda m: m["time"])
    start = messages[0]["time"]
    lines = [f"thread {found['thread']}"]
    for message in messages:
        offset = (message["time"] - start) * 1000
        who = f"{message['sender']} {message['kind']}"
        lines.append(f"{offset:9.1f} ms  {who:<28} {message['topic']}  [{message['trace'][:8]}]")
    return "\n".join(lines)


def format_trace(found: dict[str, Any]) -> str:
    """The messages as a tree (a message under the one whose handling sent it), then the
    tool calls; times are milliseconds from the first message."""
    messages = found["messages"]
    calls = found["calls"]
    start = min([m["time"] for m in messages] + [c["started"] for c in calls])
    ids = {m["id"] for m in messages}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for message in sorted(messages, key=lambda m: m["time"]):
        parent = message["parent"] if message["parent"] in ids else None
        children.setdefault(parent, []).append(message)
    lines = [f"trace {found['trace']}"]

    seen: set[int] = set()
    stack = [(m, 1) for m in reversed(children.get(None, []))]
    orphans = [m for m in messages if m["parent"] in ids]  # parents that form a loop
    while True:
        if not stack:  # what no root reaches (a cycle of parents): shown as roots
            left = [m for m in orphans if id(m) not in seen]
            if not left:
                break
            stack.append((min(left, key=lambda m: m["time"]), 1))
        message, depth = stack.pop()
        if id(message) in seen:
            continue
        seen.add(id(message))
        offset = (message["time"] - start) * 1000
        kind = message["kind"]
        origin = f"({kind} from {message['sender']})"
        lines.append(f"{offset:9.1f} ms  {'  ' * depth}{message['topic']}  {origin}")
        stack.extend((child, depth + 1) for child in reversed(children.get(message["id"], [])))
    if calls:
        lines.append("tool calls:")
    for call in sorted(calls, key=lambda c: c["started"]):
        offset = (call["started"] - start) * 1000
        took = (call["ended"] - call["started"]) * 1000
        who = f"by {call['caller']}, {took:.1f} ms, {call['outcome']}"
        lines.append(f"{offset:9.1f} ms    {call['tool']}  {who}")
    return "\n".join(lines)
