"""A bounded buffer of what passed through the broker, for ``loom trace TRACE_ID`` and
the dashboard.

Every pub/sub message carries a trace id (a root message's own id; an emit inside a
handler inherits the handled message's trace and names it as parent) and every tool call
made inside a handler carries the trace too. The broker keeps the last ``size`` messages
and answered tool calls in ring buffers: one ``append`` of references it already holds
per message, nothing decoded. ``TRACE`` scans them for one trace when an operator asks;
``RECENT`` reads their newest entries since the reader's last look.
"""

from __future__ import annotations

import math
from collections import deque
from itertools import islice
from typing import Any

from loom.broker._answers import fit

__all__ = ["FIND_LIMIT", "TraceBuffer"]

FIND_LIMIT = 1000
"""The most messages (and calls) one TRACE answer holds."""


class TraceBuffer:
    """The last ``size`` messages and ``size`` answered tool calls.

    Args:
        size: entries of each kind kept (the oldest go first).
    """

    def __init__(self, size: int = 100_000) -> None:
        self.messages: deque[tuple[Any, ...]] = deque(maxlen=size)
        """(trace, id, parent, sender, time, kind, topic, thread) per forwarded message
        (the proxy checked trace, id, sender, parent and thread; the rest is checked when
        read)."""
        self.messages_seen = 0
        """Messages recorded so far (the proxy adds each batch's count): the newest
        record's sequence number is this minus one."""
        self.calls: deque[tuple[Any, ...]] = deque(maxlen=size)
        """(seq, trace, tool, caller, worker, started, ended, outcome) per answered call
        (wall clock; ``trace`` None for a call made outside any trace, ``worker`` None for
        one no worker saw)."""
        self.calls_seen = 0
        """Calls recorded so far: the next one's ``seq`` is this."""

    def add_call(  # noqa: PLR0917 - one record, built in one place
        self,
        trace: bytes | None,
        tool: str,
        caller: str,
        worker: str | None,
        started: float,
        ended: float,
        outcome: str,
    ) -> None:
        """Record an answered call."""
        self.calls.append((self.calls_seen, trace, tool, caller, worker, started, ended, outcome))
        self.calls_seen += 1

    def find(self, trace: bytes, budget: int = 1 << 20) -> dict[str, Any]:
        """One trace's messages and tool calls, oldest first, as plain data: at most
        ``FIND_LIMIT`` of each and ``budget`` bytes in all (``truncated`` then)."""
        found = (_message(record) for record in list(self.messages) if record[0] == trace)
        messages, left = fit(
            islice((m for m in found if m is not None), FIND_LIMIT + 1), budget // 2
        )
        records = (record for record in list(self.calls) if record[1] == trace)
        calls, calls_left = fit(islice(map(_call, records), FIND_LIMIT + 1), budget // 2)
        truncated = bool(left or calls_left) or FIND_LIMIT in (len(messages), len(calls))
        return {
            "trace": trace.hex(),
            "messages": messages[:FIND_LIMIT],
            "calls": calls[:FIND_LIMIT],
            "truncated": truncated,
        }

    def find_thread(self, thread: str, budget: int = 1 << 20) -> dict[str, Any]:
        """One thread's messages, oldest first (at most ``FIND_LIMIT``, ``budget``
        bytes): a conversation's lane, across the traces it spans."""
        found = (_message(record) for record in list(self.messages) if record[7] == thread)
        messages, left = fit(islice((m for m in found if m is not None), FIND_LIMIT + 1), budget)
        return {
            "thread": thread,
            "messages": messages[:FIND_LIMIT],
            "calls": [],
            "truncated": bool(left) or len(messages) > FIND_LIMIT,
        }

    def recent(
        self, after: int, calls_after: int, limit: int, budget: int = 1 << 20
    ) -> dict[str, Any]:
        """The messages numbered above ``after`` and the calls numbered above
        ``calls_after``, at most ``limit`` of each (the newest) and ``budget`` bytes in
        all, oldest first.

        Numbers are the broker's own (0 for the first message or call recorded), never
        a peer's ids. ``gap`` / ``calls_gap`` say some were skipped: more came than
        ``limit``, or they left the buffer.
        """
        seen = self.messages_seen
        wanted = max(0, seen - 1 - after)
        taken = min(wanted, limit, len(self.messages))
        messages: list[dict[str, Any]] = []
        for offset, record in enumerate(islice(reversed(self.messages), taken)):
            message = _message(record, seen - 1 - offset)
            if message is not None:
                messages.append(message)
        messages, cut = fit(messages, budget // 2)
        taken -= cut
        calls: list[dict[str, Any]] = []
        for record in reversed(self.calls):
            if record[0] <= calls_after or len(calls) == limit:
                break
            calls.append(_call(record))
        calls, _ = fit(calls, budget // 2)
        messages.reverse()
        calls.reverse()
        return {
            "messages": messages,
            "calls": calls,
            "gap": wanted > taken,
            "calls_gap": self.calls_seen - 1 - max(calls_after, -1) > len(calls),
            "messages_seen": seen,
            "calls_seen": self.calls_seen,
        }


def _message(record: tuple[Any, ...], seq: int | None = None) -> dict[str, Any] | None:
    """A message record as plain data (None if its time is unreadable; the proxy checked
    trace, id, sender and parent, the rest is checked here)."""
    trace, mid, parent, sender, sent, kind, topic, thread = record
    if type(sent) not in (int, float) or not math.isfinite(sent):
        return None
    return {
        "seq": seq,
        "trace": trace.hex(),
        "thread": thread,
        "id": mid.hex(),
        "parent": parent.hex() if type(parent) is bytes else None,
        "topic": topic.decode(errors="replace"),
        "sender": sender,
        "kind": kind if type(kind) is int else -1,
        "time": float(sent),
    }


def _call(record: tuple[Any, ...]) -> dict[str, Any]:
    seq, trace, tool, caller, worker, started, ended, outcome = record
    return {
        "seq": seq,
        "trace": trace.hex() if trace is not None else None,
        "tool": tool,
        "caller": caller,
        "worker": worker,
        "started": started,
        "ended": ended,
        "outcome": outcome,
    }
