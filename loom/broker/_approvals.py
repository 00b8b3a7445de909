"""The approval desk: calls to tools that need a person's (or an approver actor's) yes
wait here, and only an approval lets them reach a worker.

A held call is published as ``$approval.request.<tool>`` and listed by ``APPROVALS``; an
``APPROVE`` command decides it. No decision within ``timeout`` seconds means DENIED. While
it waits, the caller gets a PROGRESS every few seconds (``{"approval": "pending", ...}``),
which keeps its own deadline from running out.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from typing import Any

from loom.broker._records import Call
from loom.protocol import decode_value

__all__ = ["ApprovalDesk"]


class _Held:
    __slots__ = ("call", "caller", "expires", "id", "next_ping", "summary", "wall")

    def __init__(self, approval_id: int, call: Call, caller: str, expires: float) -> None:
        self.id = approval_id
        self.call = call
        self.caller = caller
        self.expires = expires
        self.next_ping = 0.0
        self.wall = 0.0
        self.summary: dict[str, Any] = {}


class ApprovalDesk:
    """Holds calls until approved, denied, cancelled or expired.

    Args:
        release: dispatches an approved call (``call``, approver's name).
        refuse: answers a call DENIED (``call``, message).
        ping: sends the caller a progress report (``call``, data).
        publish: publishes an event (topic, data).
        name_of: a caller's name, from its identity.
        timeout: seconds a call waits for a decision before it is DENIED.
        max_held: calls held at once; more are answered OVERLOADED.
        max_args: bytes of a call's arguments shown in the request (the rest elided).
        clock: monotonic seconds; ``wall``: Unix seconds.
    """

    def __init__(
        self,
        *,
        release: Callable[[Call, str], None],
        refuse: Callable[[Call, str], None],
        ping: Callable[[Call, dict[str, Any]], None],
        publish: Callable[[str, dict[str, Any]], None],
        name_of: Callable[[bytes], str],
        timeout: float = 120.0,
        max_held: int = 1000,
        max_args: int = 4096,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._release = release
        self._refuse = refuse
        self._ping = ping
        self._publish = publish
        self._name_of = name_of
        self.timeout = timeout
        self.max_held = max_held
        self._max_args = max_args
        self._clock = clock
        self._wall = wall
        self._held: dict[int, _Held] = {}
        self._expiries: list[tuple[float, int]] = []
        self._ids = 0
        self.counts = {"requested": 0, "approved": 0, "denied": 0, "expired": 0}

    def full(self) -> bool:
        """As many calls wait as the desk holds (``max_held``): refuse new ones."""
        return len(self._held) >= self.max_held

    def hold(self, call: Call) -> None:
        """Hold ``call`` for a decision and announce it."""
        self._ids += 1
        now = self._clock()
        held = _Held(self._ids, call, self._name_of(call.client), now + self.timeout)
        held.wall = self._wall()
        held.summary = {
            "id": held.id,
            "tool": call.tool,
            "args": self._args(call.args),
            "caller": held.caller,
            "requested": held.wall,
            "expires": held.wall + self.timeout,
        }
        self._held[held.id] = held
        heapq.heappush(self._expiries, (held.expires, held.id))
        call.deadline = held.expires + call.timeout  # the desk answers first
        self.counts["requested"] += 1
        self._publish(f"$approval.request.{call.tool}", held.summary)
        self._remind(held, now)

    def decide(
        self, approval_id: Any, approve: bool, by: str, reason: str = "", *, who: bytes = b""
    ) -> str | None:
        """Approve or deny a held call; an error message if that cannot be done.

        Args:
            approval_id: the request's id (an int; nothing else matches).
            approve: let it run, or answer it DENIED.
            by: the approver's name, as the broker knows the peer.
            reason: said to the caller and published.
            who: the approver's identity: a caller cannot decide its own call.
        """
        held = self._held.get(approval_id) if type(approval_id) is int else None
        if held is None:
            return f"no call waits for approval #{approval_id!r} (decided, expired or cancelled)"
        call = held.call
        if who and who == call.client:
            return f"approval #{approval_id}: a caller cannot decide its own call"
        del self._held[approval_id]
        if call.answered:  # its caller gave up meanwhile
            return f"approval #{approval_id}: the caller no longer waits"
        self._announce(held, approve, by, reason)
        if approve:
            self.counts["approved"] += 1
            self._ping(call, {"approval": "approved", "id": held.id, "by": by})
            self._release(call, by)
        else:
            self.counts["denied"] += 1
            because = f": {reason}" if reason else ""
            self._refuse(call, f"{call.tool}: denied by {by}{because}")
        return None

    def waiting(self) -> int:
        """How many calls are held (safe from another thread: one ``len``)."""
        return len(self._held)

    def tool_of(self, approval_id: Any) -> str | None:
        """The tool of a held call (``None``: no call waits under that id)."""
        held = self._held.get(approval_id) if type(approval_id) is int else None
        return held.call.tool if held is not None else None

    def pending(self) -> list[dict[str, Any]]:
        """The requests still waiting, oldest first."""
        return [h.summary for h in self._held.values() if not h.call.answered]

    def tick(self) -> float | None:
        """Deny expired requests, drop cancelled ones, remind callers; the next due time."""
        now = self._clock()
        while self._expiries and self._expiries[0][0] <= now:
            _, approval_id = heapq.heappop(self._expiries)
            held = self._held.pop(approval_id, None)
            if held is None or held.call.answered:
                continue
            self.counts["expired"] += 1
            self._announce(held, False, "nobody", "no decision in time")
            message = f"{held.call.tool}: no approver answered within {self.timeout:g}s"
            self._refuse(held.call, message)
        due = self._expiries[0][0] if self._expiries else None
        for approval_id, held in list(self._held.items()):
            if held.call.answered:  # cancelled, or its caller left
                del self._held[approval_id]
                continue
            if held.next_ping <= now:
                self._remind(held, now)
            due = held.next_ping if due is None else min(due, held.next_ping)
        return due

    def _remind(self, held: _Held, now: float) -> None:
        held.next_ping = now + max(min(held.call.timeout / 2, 5.0), 0.05)
        left = max(held.expires - now, 0.0)
        self._ping(held.call, {"approval": "pending", "id": held.id, "expires_in": round(left, 1)})

    def _announce(self, held: _Held, approved: bool, by: str, reason: str) -> None:
        decision = {"id": held.id, "tool": held.call.tool, "approved": approved, "by": by}
        self._publish(f"$approval.decided.{held.call.tool}", {**decision, "reason": reason})

    def _args(self, raw: bytes) -> Any:
        if len(raw) > self._max_args:
            return f"({len(raw)} bytes of arguments, not shown)"
        try:
            return decode_value(raw)
        except Exception:
            return "(unreadable arguments)"
