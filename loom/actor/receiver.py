"""The receiving half of an actor: drain the SUB socket, resolve replies, run handlers."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import zmq

from loom.actor.event import Event
from loom.errors import ProtocolError, RemoteError
from loom.protocol import (
    ERROR,
    REPLY,
    decode_header,
    decode_payload,
    decode_topic,
    recv_message,
)

__all__ = ["Receiver"]

Handler = tuple[Callable[[Event], Any], bool]
"""A bound handler and whether it is a coroutine function."""


class Receiver:
    """Reads an actor's SUB socket on the event loop.

    Replies resolve their pending request futures at once; events are queued in a bounded
    mailbox that one task works through, one handler call at a time, in arrival order.
    When the mailbox is full the receiver stops reading, and zmq's high-water marks push
    back on the broker; it resumes once the mailbox is half empty.

    Args:
        sub: the connected SUB socket (a sync socket: drained with NOBLOCK).
        match: the handlers bound to a topic frame.
        pending: futures of requests and probes, by message id.
        stats: the actor's counters.
        run: runs one handler for one event.
        size: the mailbox's capacity, in events.
    """

    def __init__(
        self,
        sub: zmq.Socket[bytes],
        *,
        match: Callable[[bytes], tuple[Handler, ...]],
        pending: dict[bytes, asyncio.Future[Any]],
        stats: Any,
        run: Callable[[Event, Callable[[Event], Any], bool], Awaitable[None]],
        size: int,
    ) -> None:
        self._sub = sub
        self._match = match
        self._pending = pending
        self._stats = stats
        self._run = run
        self._size = size
        self._mailbox: deque[tuple[Event, tuple[Handler, ...]]] = deque()
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._reading = False
        self._paused = False
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def open(self) -> None:
        """Start reading the socket (replies and probes resolve from now on)."""
        self._reading = True
        self._loop.add_reader(self._sub.FD, self._on_readable)
        self._loop.call_soon(self._on_readable)  # the fd is edge-triggered

    def dispatch(self, name: str) -> None:
        """Start running handlers for queued and future events."""
        self._task = self._loop.create_task(self._dispatch_loop(), name=name)

    async def close(self, grace: float = 0.0) -> int:
        """Start no new handler, give the one in progress up to ``grace`` seconds (replies
        still arrive meanwhile), cancel it after that, then stop reading.

        Returns:
            How many queued events were left unhandled.
        """
        self._closing = True
        self._wake.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=grace)
            if not done:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._reading and not self._paused:
            self._loop.remove_reader(self._sub.FD)
        self._reading = False
        left = len(self._mailbox)
        self._mailbox.clear()
        return left

    def _on_readable(self) -> None:
        if not self._reading or self._paused:
            return
        sub, pending, mailbox, match = self._sub, self._pending, self._mailbox, self._match
        stats = self._stats
        queued = False
        for _ in range(1000):
            try:
                topic, header, payload = recv_message(sub)
                envelope = decode_header(header)
                if envelope.kind >= REPLY:
                    fut = pending.pop(envelope.correlation_id, None)  # type: ignore[arg-type]
                    if fut is not None:
                        _resolve(fut, envelope.kind, payload)
                        continue
                handlers = match(topic)
                if not handlers:
                    if envelope.kind >= REPLY:
                        stats.late_replies += 1
                    else:
                        stats.unmatched += 1
                    continue
                data = decode_payload(payload, envelope.content_type)
                text = decode_topic(topic)
            except zmq.Again:
                break
            except ProtocolError as exc:
                stats.drops.drop(exc.reason, str(exc))
                continue
            mailbox.append((Event(text, data, envelope), handlers))
            queued = True
        else:
            self._loop.call_soon(self._on_readable)  # more may wait: yield, then go on
        if queued:
            self._wake.set()
            if len(mailbox) >= self._size:
                self._paused = True
                self._loop.remove_reader(sub.FD)

    def _resume(self) -> None:
        self._paused = False
        self._loop.add_reader(self._sub.FD, self._on_readable)
        self._loop.call_soon(self._on_readable)

    async def _dispatch_loop(self) -> None:
        mailbox, wake, resume_at, run = self._mailbox, self._wake, self._size // 2, self._run
        while not self._closing:
            if not mailbox:
                wake.clear()
                await wake.wait()
                continue
            event, handlers = mailbox.popleft()
            if self._paused and self._reading and len(mailbox) <= resume_at:
                self._resume()
            deadline = event.envelope.deadline
            if deadline is not None and deadline < time.time():
                self._stats.expired += 1
                continue
            for handler, is_async in handlers:
                await run(event, handler, is_async)


def _resolve(fut: asyncio.Future[Any], kind: int, payload: bytes) -> None:
    if fut.done():
        return
    try:
        data = decode_payload(payload)
    except ProtocolError as exc:
        fut.set_exception(exc)
        return
    if kind == ERROR:
        info = data if isinstance(data, dict) else {}
        fut.set_exception(
            RemoteError(str(info.get("type", "Error")), str(info.get("message", data)))
        )
    else:
        fut.set_result(data)
