"""The tool router's records: worker slots, workers, tools, calls (plain slotted classes)."""

from __future__ import annotations

from collections import deque
from typing import Any

__all__ = ["Call", "Slot", "ToolEntry", "WorkerState", "last_used"]


class Slot:
    """One worker's capacity for one tool."""

    __slots__ = ("busy", "capacity", "last_used", "tool", "worker")

    def __init__(self, worker: WorkerState, tool: str, capacity: int) -> None:
        self.worker = worker
        self.tool = tool
        self.capacity = capacity
        self.busy = 0
        self.last_used = 0.0


class WorkerState:
    """A worker that said READY."""

    __slots__ = (
        "brokers",
        "calls",
        "draining",
        "identity",
        "name",
        "pid",
        "since",
        "slots",
    )

    def __init__(self, identity: bytes, name: str, pid: int | None, since: float) -> None:
        self.identity = identity
        self.name = name
        self.pid = pid
        self.since = since
        self.slots: dict[str, Slot] = {}
        self.calls: dict[int, Call] = {}
        """Calls running there, by token, including those whose caller no longer waits."""
        self.draining = False
        self.brokers: dict[str, list[str]] = {}
        """The link's tools -> the brokers that serve them (empty for a local worker)."""

    @property
    def remote(self) -> bool:
        """The federation link, serving tools of other brokers: used when no local
        worker is free, and never for the calls the link itself makes."""
        return bool(self.brokers)


class ToolEntry:
    """A tool: its announced spec, the workers serving it, its queue and counters."""

    __slots__ = ("calls", "errors", "free", "name", "queue", "size", "slots", "spec")

    def __init__(self, name: str, spec: dict[str, Any]) -> None:
        self.name = name
        self.spec = spec
        self.size = 0
        """The spec's encoded bytes (counted against the broker's bound)."""
        self.slots: dict[bytes, Slot] = {}
        self.free: list[Slot] = []
        """Slots with free capacity, least recently used first."""
        self.queue: deque[Call] = deque()
        self.calls = 0
        self.errors = 0

    @property
    def idempotent(self) -> bool:
        return bool(self.spec.get("idempotent"))

    @property
    def approval(self) -> bool:
        """Each call waits for an approver's yes."""
        return self.spec.get("approval") is True


class Call:
    """A call from its arrival until its caller has an answer (and its worker is done)."""

    __slots__ = (
        "answered",
        "approved_by",
        "args",
        "attempts",
        "call_id",
        "caller",
        "client",
        "deadline",
        "local_only",
        "slot",
        "started",
        "timeout",
        "token",
        "tool",
        "trace",
    )

    def __init__(  # noqa: PLR0917 - one slotted record, built in one place
        self,
        token: int,
        client: bytes,
        call_id: int,
        tool: str,
        args: bytes,
        timeout: float,
        deadline: float,
        trace: bytes | None,
        caller: str,
    ) -> None:
        self.token = token
        self.caller = caller
        """The caller's identity (told to the worker with the call)."""
        self.client = client
        self.call_id = call_id
        self.tool = tool
        self.args = args
        self.timeout = timeout
        self.deadline = deadline
        self.trace = trace
        self.slot: Slot | None = None
        self.attempts = 0
        self.answered = False
        self.approved_by: str | None = None
        self.started = deadline - timeout
        """Monotonic seconds when the call reached the broker."""
        self.local_only = False
        """A call from another broker (through the link): for local workers only."""


REMOTE_RANK = 1e15
"""Added to a remote slot's ``last_used`` as it is sorted: after every local slot."""


def last_used(slot: Slot) -> float:
    """A free slot's rank: local workers least recently used first, then remote ones."""
    return slot.last_used + REMOTE_RANK if slot.worker.remote else slot.last_used
