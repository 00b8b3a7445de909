"""A bounded buffer of what passed through the broker, for ``loom trace TRACE_ID``.

Every pub/sub message carries a trace id (a root message's own id; an emit inside a
handler inherits the handled message's trace and names it as parent) and every tool call
made inside a handler carries the trace too. The broker keeps the last ``size`` of each
in ring buffers: one ``append`` of references it already holds per message, nothing
decoded. ``TRACE`` scans them for one trace when an operator asks.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

__all__ = ["TraceBuffer"]


class TraceBuffer:
    """The last ``size`` messages and ``size`` answered tool calls.

    Args:
        size: entries of each kind kept (the oldest go first).
    """

    def __init__(self, size: int = 100_000) -> None:
        self.messages: deque[tuple[Any, ...]] = deque(maxlen=size)
        """(trace, id, parent, sender, time, kind, topic) per forwarded message (the proxy
        checked trace, id and sender; the rest is checked when read)."""
        self.calls: deque[tuple[Any, ...]] = deque(maxlen=size)
        """(trace, tool, caller, started, ended, outcome) per answered call (wall clock)."""

    def find(self, trace: bytes) -> dict[str, Any]:
        """One trace's messages and tool calls, oldest first, as plain data."""
        messages = [
            {
                "id": mid.hex(),
                "parent": parent.hex() if type(parent) is bytes else None,
                "topic": topic.decode(errors="replace"),
                "sender": sender,
                "kind": kind if type(kind) is int else -1,
                "time": float(sent),
            }
            for found, mid, parent, sender, sent, kind, topic in list(self.messages)
            if found == trace and type(sent) in (int, float) and math.isfinite(sent)
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
