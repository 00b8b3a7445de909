"""An actor's reliable side: durable publishes awaiting the broker's PUBACK, and durable
subscriptions (DSUB streams) handled exactly once while the actor runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from loom.actor._event import Event
from loom.actor._router import Router
from loom.errors import ClosedError, ProtocolError
from loom.logs import DropCounter
from loom.protocol import (
    DACK,
    DELIVER,
    DSUB,
    EVENT,
    PUBACK,
    PUBLISH,
    VERSION,
    DsubAnswer,
    Envelope,
    decode_acks,
    decode_delivery,
    decode_header,
    decode_payload,
)
from loom.session import Session

__all__ = ["Durability"]

Handler = tuple[Callable[[Event], Any], bool]
_ACK_EVERY = 64
_SKIPPED = Envelope(
    VERSION, EVENT, b"\x00", "", 0.0, None, None, None, None, 0, None, None, None, None
)
"""The header of a delivery that could not be read: it takes its turn, to be acknowledged
in order, and no handler sees it."""
_ACK_AFTER = 0.05
_RESEND_AFTER = 2.0


class Durability:
    """Durable publishing and durable subscriptions over an actor's session.

    Publishing: each durable event stays in ``unacked`` until the broker acknowledges it
    (logged); at most ``window`` may wait, then ``publish`` waits (backpressure). After
    the broker comes back they are all sent again; the broker drops the ones it already
    logged (by message id).

    Subscribing: the broker streams, per subscription name, every logged event matching
    its patterns that the name has not acknowledged, in sequence order. Deliveries with a
    sequence number already delivered are dropped (counted as ``duplicates``), so each
    event reaches the handlers once while the actor runs; handled events are acknowledged
    in batches. An event handled just before the actor itself dies may come again after
    its restart (the acknowledgement may not have reached the broker).

    Args:
        session: the actor's open session.
        routes: handlers by subscription name.
        enqueue: puts a delivered event and its handlers in the actor's mailbox.
        drops: the actor's drop counter.
        log: the actor's logger.
        window: durable publishes awaiting acknowledgement before ``publish`` waits.
    """

    def __init__(
        self,
        session: Session,
        *,
        routes: dict[str, Router[Handler]],
        enqueue: Callable[[Event, tuple[Handler, ...]], None],
        drops: DropCounter,
        log: Any,
        window: int = 1000,
    ) -> None:
        self._session = session
        self._routes = routes
        self._enqueue = enqueue
        self._drops = drops
        self._log = log
        self.window = window
        self.unacked: dict[bytes, list[bytes]] = {}
        self.sent_at: dict[bytes, float] = {}
        self.resent = 0
        self._retry: asyncio.Task[None] | None = None
        self._room = asyncio.Event()
        self._room.set()
        self._empty = asyncio.Event()
        self._empty.set()
        self.delivered: dict[str, int] = {}
        self.handled: dict[str, int] = {}
        self.duplicates = 0
        self.refused = 0
        self._to_ack: dict[str, int] = {}
        self._since_ack = 0
        self._ack_every = _ACK_EVERY
        """Handled events per acknowledgement: at most half the broker's window."""
        self._closed = False
        self._ack_timer: asyncio.TimerHandle | None = None
        session.streams[PUBACK] = self._on_puback
        session.streams[DELIVER] = self._on_deliver

    # --- publishing ----------------------------------------------------------------

    async def publish(self, mid: bytes, topic: bytes, header: bytes, payload: bytes) -> None:
        """Send a durable event; waits while ``window`` events await acknowledgement.

        Raises:
            ClosedError: the session closed meanwhile.
        """
        if len(self.unacked) >= self.window:
            self._room.clear()  # set again at half the window: acks come in batches
            await self._room.wait()
        if self._closed:
            raise ClosedError("the actor's link is closed")
        message = [PUBLISH, topic, header, payload]
        self.unacked[mid] = message
        self.sent_at[mid] = time.monotonic()
        self._empty.clear()
        await self._session.send_waiting(message)
        if self._retry is None:
            self._retry = asyncio.get_running_loop().create_task(self._resend_stale())

    async def _resend_stale(self) -> None:
        """Send again what has waited ``_RESEND_AFTER`` seconds for its acknowledgement (a
        PUBACK can be lost when the link is full; the broker drops the copies)."""
        try:
            while self.unacked:
                await asyncio.sleep(_RESEND_AFTER / 2)
                now = time.monotonic()
                for mid, message in list(self.unacked.items()):
                    if now - self.sent_at.get(mid, now) >= _RESEND_AFTER:
                        self.sent_at[mid] = now
                        self.resent += 1
                        await self._session.send_waiting(message)
        finally:
            self._retry = None

    def _on_puback(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            raise ProtocolError("frames", f"PUBACK with {len(frames)} frames")
        for mid, _, error in decode_acks(frames[0]):
            self.sent_at.pop(mid, None)
            if self.unacked.pop(mid, None) is not None and error is not None:
                self.refused += 1
                reason = f"durable_{str(error).lower()}"
                self._drops.drop(reason, f"the broker refused: {error}")
        if len(self.unacked) <= self.window // 2:
            self._room.set()
        if not self.unacked:
            self._empty.set()

    async def resend(self) -> None:
        """Send every unacknowledged event again (after the broker came back)."""
        now = time.monotonic()
        for mid, message in list(self.unacked.items()):
            self.sent_at[mid] = now
            await self._session.send_waiting(message)

    async def flush(self, timeout: float) -> int:
        """Wait until every durable event is acknowledged; returns how many are not."""
        if self.unacked:
            try:
                async with asyncio.timeout(timeout):
                    await self._empty.wait()
            except TimeoutError:
                self._log.warning("durable events not acknowledged", events=len(self.unacked))
        self.send_acks()
        return len(self.unacked)

    # --- subscribing ---------------------------------------------------------------

    async def announce(self, timeout: float, names: list[str] | None = None) -> None:
        """Ask the broker to stream each subscription (all of them by default).

        Raises:
            DurableError: the broker has no durable log, or no room for the subscription.
            RefusedError: the broker refused the subscription otherwise.
            BrokerUnavailableError: no answer within ``timeout`` seconds.
        """
        for name in names if names is not None else list(self._routes):
            body = {"name": name, "patterns": self._routes[name].patterns()}
            position = await self._session.request(DSUB, body, DsubAnswer, timeout=timeout)
            acked, last = position.acked, position.last_seq
            self._ack_every = min(_ACK_EVERY, max(1, position.window // 2))
            if last < self.delivered.get(name, 0):  # a new log (data_dir wiped): start over
                self.delivered[name] = self.handled[name] = acked
            else:
                self.delivered[name] = max(self.delivered.get(name, 0), acked)
                self.handled[name] = max(self.handled.get(name, 0), acked)

    def _on_deliver(self, frames: list[bytes]) -> None:
        if len(frames) != 4:
            raise ProtocolError("frames", f"DELIVER with {len(frames)} frames")
        meta, topic_frame, header, payload = frames
        seq, name = decode_delivery(meta)
        routes = self._routes.get(name)
        if routes is None:
            self._drops.drop("stream", f"delivery for unknown subscription {name!r}")
            return
        if seq <= self.delivered.get(name, 0):
            self.duplicates += 1
            if seq <= self.handled.get(name, 0):  # the broker lost our ack: say it again
                self._to_ack[name] = self.handled[name]
                self._schedule_ack()
            return
        self.delivered[name] = seq
        try:
            envelope = decode_header(header)
            topic, handlers = routes.route(topic_frame)
            data = decode_payload(payload, envelope.content_type)
        except ProtocolError:  # skipped, but acknowledged in its turn: the stream goes on
            self._enqueue(Event("$skipped", None, _SKIPPED, seq, name), ())
            raise
        self._enqueue(Event(topic, data, envelope, seq, name), handlers)

    def on_handled(self, event: Event) -> None:
        """The receiver handled a delivered event: acknowledge it (batched)."""
        name, seq = event.stream, event.seq
        assert name is not None and seq is not None
        self.handled[name] = seq
        self._to_ack[name] = seq
        self._since_ack += 1
        if self._since_ack >= self._ack_every:
            self.send_acks()
        else:
            self._schedule_ack()

    def _schedule_ack(self) -> None:
        if self._ack_timer is None:
            loop = asyncio.get_running_loop()
            self._ack_timer = loop.call_later(_ACK_AFTER, self.send_acks)

    def send_acks(self) -> None:
        """Send the pending acknowledgements now."""
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        unsent = {
            name: seq
            for name, seq in self._to_ack.items()
            if not self._session.tell(DACK, {"name": name, "seq": seq})
        }
        self._to_ack = unsent  # a full link: try again soon (acks are cumulative)
        self._since_ack = 0
        if unsent and not self._session.closed:
            self._schedule_ack()

    def close(self) -> None:
        """The link is closing: wake publishers waiting for room (they fail)."""
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        self._closed = True
        self._room.set()
        self._empty.set()
