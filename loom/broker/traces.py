"""A bounded buffer of what passed through the broker, for ``loom trace TRACE_ID``.

Every pub/sub message carries a trace id (a root message's own id; an emit inside a
handler inherits the handled message's trace and names it as parent) and every tool call
made inside a handler carries the trace too. The broker keeps the last ``size`` of each
in ring buffers: one ``append`` of references it already holds per message, nothing
decoded. ``TRACE`` scans them for one trace when an operator asks.
"""

from __future__ import annotations

from collections import deque
from typing import Any

__all__ = ["TraceBuffer"]


class TraceBuffer:
    """The last ``size`` messages and ``size`` answered tool calls.

    Args:
        size: entries of each kind kept (the oldest go first).
    """

    def __init__(self, size: int = 100_000) -> None:
        self.messages: deque[tuple[tuple[Any, ...], bytes]] = deque(maxlen=size)
        """(header fields, topic) per message, as the proxy read them."""
        self.calls: deque[tuple[Any, ...]] = deque(maxlen=size)
        """(trace, tool, caller, started, ended, outcome) per answered call (wall clock)."""

    def find(self, trace: bytes) -> dict[str, Any]:
        """One trace's messages and tool calls, oldest first, as plain data."""
        messages = [
            {
                "id": fields[2].hex(),
                "parent": fields[11].hex() if fields[11] else None,
                "topic": topic.decode(errors="replace"),
                "sender": fields[3],
                "kind": fields[1],
                "time": fields[4],
            }
            for fields, topic in list(self.messages)
            if fields[10] == trace
        ]
        calls = [
            {
                "tool": tool,
                "caller": caller,
                "started": started,
                "ended": ended,
                "outcome": outcome,
            }
            for found, tool, caller, started, ended, outcome in list(self.calls)
            if found == trace
        ]
        return {"trace": trace.hex(), "messages": messages, "calls": calls}
