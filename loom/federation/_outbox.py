"""What the link's parts share: the bounded queue of what goes out to NATS, the
counters, the background tasks, and the face the link shows its tool and JetStream
parts (:class:`LinkCore`)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from loom.config import FederationSettings

if TYPE_CHECKING:
    from loom.logs import DropCounter
    from loom.session import Session

__all__ = ["Counts", "LinkCore", "Outbox", "Tasks"]

Message = tuple[str, bytes, str]
"""(subject, body, reply subject or "")."""


class Outbox:
    """Messages for NATS, in order, bounded in count and bytes; the flusher publishes
    them while NATS is up."""

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.items: deque[Message] = deque()
        self.bytes = 0
        self.wake = asyncio.Event()
        self._max_messages = max_messages
        self._max_bytes = max_bytes

    def put(self, subject: str, body: bytes, reply: str = "") -> bool:
        """Queue one message; False (nothing queued) when the bound is reached."""
        if len(self.items) >= self._max_messages or self.bytes + len(body) > self._max_bytes:
            return False
        self.items.append((subject, body, reply))
        self.bytes += len(body)
        self.wake.set()
        return True

    def put_all(self, messages: Iterable[Message]) -> None:
        """Queue ``messages`` after everything waiting, whatever the bound (the backlog
        kept while NATS was down: it has bounds of its own)."""
        for message in messages:
            self.items.append(message)
            self.bytes += len(message[1])
        self.wake.set()

    def put_first(self, messages: Iterable[Message]) -> None:
        """Queue ``messages`` before everything waiting, in their order (events sent
        again: the resend ring bounds them)."""
        messages = list(messages)
        self.items.extendleft(reversed(messages))
        self.bytes += sum(len(body) for _, body, _ in messages)
        self.wake.set()

    def take(self) -> Message:
        message = self.items.popleft()
        self.bytes -= len(message[1])
        return message

    def give_back(self, message: Message) -> None:
        """A message that could not be published: first again."""
        self.items.appendleft(message)
        self.bytes += len(message[1])


@dataclass
class Counts:
    """The link's counters (reported to its broker every second, in STATS)."""

    exported: int = 0
    imported: int = 0
    duplicates: int = 0
    dropped: int = 0
    resent: int = 0
    calls_out: int = 0
    calls_in: int = 0


class Tasks:
    """The link's background tasks: each forgotten when done, all cancelled at stop."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                continue
        self._tasks.clear()


class LinkCore(Protocol):
    """What the link's tool and JetStream parts use of it."""

    settings: FederationSettings
    name: str
    boot: str
    log: Any
    drops: DropCounter
    counts: Counts
    outbox: Outbox
    tasks: Tasks
    nc: Any
    up: bool
    events: Session | None

    async def report(self) -> None: ...

    def drop(self, reason: str, message: str) -> None: ...
