"""Scatter-gather: one request, every reply collected under a policy, with a deadline.

A ``Collector`` stands in the actor's table of pending requests, beside the futures of
plain requests: replies are taken off the link by the reader as they come (never through
the mailbox), so gathering from inside a handler cannot deadlock on the handler itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, Literal

from loom.errors import RemoteError

__all__ = ["Assembled", "Awarded", "Barrier", "Collector", "Gathered", "Policy", "needed"]

Policy = Literal["any", "majority", "all"] | int
"""``any``: the first reply; an int k: the first k; ``majority``: more than half the
expected responders; ``all``: every expected responder (or until the deadline when
nobody knows how many there are)."""


@dataclasses.dataclass
class Gathered:
    """What a scatter-gather collected, and from whom.

    Attributes:
        topic: the request's topic.
        replies: the answers, by responder name, in arrival order.
        failed: the responders whose handler raised, with the error.
        expected: the responders asked (the actors subscribed to the topic, or what the
            caller said), ``None`` when unknown.
        missing: expected responders that had not answered when the gathering ended
            (slow, dead, or simply not waited for: their replies are dropped as late).
        complete: the policy was met (else the deadline passed first).
        elapsed: seconds the gathering took.
    """

    topic: str
    replies: dict[str, Any] = dataclasses.field(default_factory=dict)
    failed: dict[str, RemoteError] = dataclasses.field(default_factory=dict)
    expected: list[str] | None = None
    missing: list[str] = dataclasses.field(default_factory=list)
    complete: bool = False
    elapsed: float = 0.0

    def values(self) -> list[Any]:
        """The answers, in arrival order."""
        return list(self.replies.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: replies, failures as ``{"type", "message"}``, the rest."""
        return {
            "topic": self.topic,
            "replies": self.replies,
            "failed": {
                n: {"type": e.type_name, "message": e.message} for n, e in self.failed.items()
            },
            "expected": self.expected,
            "missing": self.missing,
            "complete": self.complete,
            "elapsed": round(self.elapsed, 6),
        }


def needed(policy: Policy, expected: int | None) -> int | None:
    """Replies the policy waits for (``None``: until the deadline).

    Raises:
        ValueError: an unknown policy, or a k below 1.
    """
    if isinstance(policy, bool) or not isinstance(policy, int | str):
        raise ValueError(f"policy must be 'any', 'majority', 'all' or an int: {policy!r}")
    if isinstance(policy, int):
        if policy < 1:
            raise ValueError(f"first k needs k >= 1, not {policy}")
        return policy
    if policy == "any":
        return 1
    if policy == "majority":
        return None if expected is None else expected // 2 + 1
    if policy == "all":
        return expected
    raise ValueError(f"policy must be 'any', 'majority', 'all' or an int: {policy!r}")


class Collector:
    """Replies to one request, until ``need`` count (successes only, with
    ``successful``), or every expected responder has answered one way or the other."""

    def __init__(
        self, result: Gathered, need: int | None, *, successful: bool, cap: int = 10_000
    ) -> None:
        self.result = result
        self.need = need
        self.successful = successful
        self.cap = cap
        """Replies kept at most (a topic with very many responders)."""
        self.finished = asyncio.get_running_loop().create_future()
        self._expected = set(result.expected) if result.expected is not None else None

    # the face the reader and the actor's shutdown use (that of a future)
    def done(self) -> bool:
        return self.finished.done()

    def set_exception(self, exc: BaseException) -> None:
        if not self.finished.done():
            self.finished.set_exception(exc)

    def deliver(self, sender: str, data: Any, error: RemoteError | None) -> None:
        """One reply; a responder's second reply (another of its handlers) is ignored."""
        result = self.result
        if self.finished.done() or sender in result.replies or sender in result.failed:
            return
        if len(result.replies) + len(result.failed) >= self.cap:
            return
        if error is None:
            result.replies[sender] = data
        else:
            result.failed[sender] = error
        counted = (
            len(result.replies) if self.successful else len(result.replies) + len(result.failed)
        )
        if self.need is not None and counted >= self.need:
            result.complete = True
            self.finished.set_result(None)
        elif self._expected is not None and self._expected <= (
            result.replies.keys() | result.failed.keys()
        ):
            self.finished.set_result(None)  # everyone answered: no more will come


@dataclasses.dataclass
class Assembled:
    """How a barrier ended.

    Attributes:
        name: the barrier.
        arrived: who arrived (this actor first), in the order heard.
        missing: expected participants that had not arrived at the deadline.
        complete: everyone expected arrived.
        elapsed: seconds waited.
    """

    name: str
    arrived: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    complete: bool = False
    elapsed: float = 0.0


class Barrier:
    """The arrivals at one barrier, heard on its topic by the actor's reader (never the
    mailbox: a handler may wait at a barrier)."""

    def __init__(self, result: Assembled, expected: set[str] | None, count: int | None) -> None:
        self.result = result
        self.expected = expected
        self.count = count
        self.finished = asyncio.get_running_loop().create_future()
        self.on_new: Any = None
        """Called when someone new arrives (the actor says again that it is here, for
        those who subscribed after it first did)."""

    def done(self) -> bool:
        return self.finished.done()

    def set_exception(self, exc: BaseException) -> None:
        if not self.finished.done():
            self.finished.set_exception(exc)

    def arrive(self, who: str) -> None:
        arrived = self.result.arrived
        if who in arrived or len(arrived) >= 10_000:
            return
        arrived.append(who)
        if self.on_new is not None and len(arrived) > 1:
            self.on_new()
        if self.expected is not None:
            complete = self.expected <= set(arrived)
        else:
            complete = self.count is not None and len(arrived) >= self.count
        if complete and not self.finished.done():
            self.result.complete = True
            self.finished.set_result(None)


@dataclasses.dataclass
class Awarded:
    """How a contract net ended.

    Attributes:
        task: what was called for.
        proposals: the bids, by bidder.
        refused: who declined, with the reason (a ``{"refuse": reason}`` reply, or a
            handler that raised).
        missing: expected bidders silent at the bidding deadline (late bids are ignored).
        winner: the best bid's bidder by ``score`` (``None``: no bid).
        result: what the winner returned for the task.
        error: why the winner's work failed (``RemoteError``, ``RequestTimeoutError``),
            else ``None``.
    """

    task: Any
    proposals: dict[str, Any] = dataclasses.field(default_factory=dict)
    refused: dict[str, str] = dataclasses.field(default_factory=dict)
    missing: list[str] = dataclasses.field(default_factory=list)
    winner: str | None = None
    result: Any = None
    error: Exception | None = None
