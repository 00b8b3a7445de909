"""The pub/sub proxy: XSUB (peers publish) -> validate and count -> XPUB (peers subscribe).

Publishers are sent one subscribe-all, so every message reaches the broker and the XPUB
does all the filtering: a subscription is then in force the moment the broker has read
it, which is what lets an actor confirm its subscriptions end to end (see
``docs/protocol.md``, "Confirming a link").

The hot loop wakes once, then drains up to ``budget`` messages with NOBLOCK. Per message
it costs three ``recv``, three RCVMORE checks, one header decode, a dict lookup and three
``send``; nothing else.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from loom.broker._federation import FederationPlane
from loom.broker._groups import Groups
from loom.broker._settings import BrokerSettings
from loom.broker._traces import TraceBuffer
from loom.errors import LoomError, ProtocolError
from loom.logs import DropCounter
from loom.protocol import (
    ERROR,
    EVENT,
    MAX_TOPIC_BYTES,
    REPLY,
    REQUEST,
    IdSource,
    decode_header,
    decode_topic,
    encode_payload,
    encode_topic,
    pack_header,
    raw_send,
    recv_message,
    recv_signed,
    send_message,
    user_id,
)

if TYPE_CHECKING:
    from loom.broker._security import Guard

__all__ = ["PubSubProxy", "TopicStats"]

PUBLISHED, FORWARDED, DROPPED, MALFORMED, TOPIC = range(5)
COUNTER_NAMES = ("published", "forwarded", "dropped", "malformed")
Row = list[Any]
"""``[published, forwarded, dropped, malformed, topic]``: a topic's counters, and its
frame as the one bytes object the trace buffer refers to for every message of it."""

_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_NOBLOCK_MORE = _NOBLOCK | _SNDMORE
_XPUB_NODROP = int(zmq.XPUB_NODROP)
MAX_SUBSCRIPTIONS = 10_000
"""Distinct subscription prefixes listed in STATS (libzmq itself keeps them all)."""
MAX_SENDERS = 10_000
"""Distinct sender names the trace buffer keeps (later ones are recorded as ``(other)``)."""
_SHED = "forwarded while a subscriber is stalled: it may have missed this"
_STANDARD = b"standard"
_RELIABLE = b"reliable"


class TopicStats:
    """Per-topic counters ``[published, forwarded, dropped, malformed, topic]``.

    ``dropped`` counts messages at least one subscriber did not get. Distinct topics are
    capped; past the cap, new topics share the ``(other)`` row so memory stays bounded.
    """

    def __init__(self, max_topics: int = 10_000) -> None:
        self.rows: dict[bytes, Row] = {}
        self.other: Row = [0, 0, 0, 0, b"(other)"]
        self.unparsed: Row = [0, 0, 0, 0, b"(unparsed)"]
        """Messages whose topic could not be read at all (bad frames, not UTF-8)."""
        self._max = max_topics

    def row(self, topic: bytes) -> Row:
        """The counters for ``topic`` (a topic already known to be valid)."""
        row = self.rows.get(topic)
        if row is None:
            if len(self.rows) >= self._max:
                return self.other
            row = self.rows[topic] = [0, 0, 0, 0, topic]
        return row

    def snapshot(self) -> dict[str, Any]:
        """Counters by topic and in total, as plain data."""
        topics = {
            t.decode(): dict(zip(COUNTER_NAMES, r[:TOPIC], strict=True))
            for t, r in self.rows.items()
        }
        if any(self.other[:TOPIC]):
            topics["(other)"] = dict(zip(COUNTER_NAMES, self.other[:TOPIC], strict=True))
        rows = (self.other, self.unparsed, *self.rows.values())
        totals = [sum(col) for col in zip(*(r[:TOPIC] for r in rows), strict=True)]
        return {
            "topics": topics,
            "totals": dict(zip(COUNTER_NAMES, totals, strict=True)),
        }


class PubSubProxy:
    """Forwards ``[topic, header, payload]`` from ``xsub`` to ``xpub``, dropping and
    counting what is malformed, oversized, expired or undeliverable.

    Args:
        xsub: a bound XSUB socket (peers' PUB/XPUB sockets connect to it).
        xpub: a bound XPUB socket (peers' SUB sockets connect to it).
        settings: the broker's settings: payloads larger than ``max_payload`` are dropped
            (counted ``oversized``); ``stall_timeout`` is how long a send may wait for a
            full subscriber before the proxy sheds load: for ``10 * stall_timeout`` it then
            delivers lossily (the subscribers that keep up get everything) and counts
            every message it forwards meanwhile as ``dropped`` (reason ``stalled``).
            libzmq's XPUB cannot say which subscriber missed what, so a stalled
            subscriber that is still full when the window ends misses messages uncounted
            until it drains its queue.
        traces: where forwarded messages are recorded.
        log: a structlog logger.
        guard: identities and rights: each message is checked against its publisher's
            rights and gets its origin written in, each subscription is granted or
            refused (the XPUB is in manual mode); ``None`` on a broker run insecure.
        federation: the federation link's plane: events on exported topics go to it,
            and it follows the prefixes subscribers hold.
        clock: wall-clock seconds (deadlines are wall-clock).
    """

    def __init__(
        self,
        xsub: zmq.Socket[bytes],
        xpub: zmq.Socket[bytes],
        settings: BrokerSettings,
        *,
        traces: TraceBuffer,
        log: Any,
        max_topics: int = 10_000,
        guard: Guard | None = None,
        federation: FederationPlane,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._xsub = xsub
        self.federation = federation
        self._name = settings.name
        self._guard = guard
        self.granted: dict[bytes, int] = {}
        """Subscriptions granted (manual mode): prefix -> how many grants stand."""
        self._xpub = xpub
        self._max_payload = settings.max_payload
        self._stall_timeout = stall_timeout = settings.stall_timeout
        self._clock = clock
        self._log = log
        self._shed_until = 0.0
        self.traces = traces
        self.stats = TopicStats(max_topics)
        self.drops = DropCounter(log)
        self.subscriptions: set[bytes] = set()
        self.groups = Groups()
        """Queue groups: the control plane fills it, this proxy delivers through it."""
        self.groups.send = self._send_now
        self.groups.fail = self._fail_request
        self._ids = IdSource()
        self._senders: dict[str, str] = {}
        """Senders' names as the trace buffer refers to them: one object per name."""
        xpub.setsockopt(zmq.XPUB_NODROP, 1)
        xpub.setsockopt(zmq.SNDTIMEO, max(1, int(stall_timeout * 1000)))
        xsub.send(b"\x01")  # subscribe-all: publishers send everything, the XPUB filters

    def pump(self, budget: int = 1000) -> None:  # noqa: PLR0915 - the hot loop, in one piece
        """Forward up to ``budget`` waiting messages (the poll is level-triggered: if more
        wait, the next poll returns at once)."""
        xpub = self._xpub
        stats = self.stats
        rows = stats.rows
        max_payload = self._max_payload
        xsub = self._xsub
        if self._shed_until and time.monotonic() >= self._shed_until:
            self._end_shed()
        shedding = bool(self._shed_until)
        traces = self.traces
        trace = traces.messages.append
        senders = self._senders
        traced = 0  # records appended, added to the buffer's count once, at the end
        guard = self._guard
        groups = self.groups
        federation = self.federation
        exporting = federation.link is not None
        who = ""
        try:
            for _ in range(budget):
                try:
                    if guard is None:
                        topic, header, payload = recv_message(xsub)
                    else:
                        topic, header, payload, who = recv_signed(xsub)
                    row = rows.get(topic) or self._new_row(topic)
                except zmq.Again:
                    return
                except ProtocolError as exc:  # no readable topic to count it under
                    stats.unparsed[MALFORMED] += 1
                    self.drops.drop(exc.reason, str(exc))
                    continue
                try:
                    env = decode_header(header)
                except ProtocolError as exc:
                    self._drop(row, MALFORMED, exc.reason, str(exc), topic)
                    continue
                row[PUBLISHED] += 1
                if len(payload) > max_payload:
                    size = f"payload of {len(payload)} bytes over the limit of {max_payload}"
                    self._drop(row, DROPPED, "oversized", size, topic)
                    continue
                deadline = env.deadline
                if deadline is not None and deadline < self._clock():
                    self._drop(row, DROPPED, "expired", "deadline passed", topic)
                    continue
                if guard is not None:
                    signed = guard.admit(topic, header, env, who)
                    if signed is None:  # a dropped one here; by right in the guard
                        row[DROPPED] += 1
                        continue
                    header = signed
                if env.trace_id is not None:  # checked and bounded
                    sender = senders.get(env.sender) or self._intern(env.sender)
                    trace(
                        (
                            env.trace_id,
                            env.id,
                            env.parent_id,
                            sender,  # one str per sender, not per message
                            env.timestamp,
                            env.kind,
                            row[TOPIC],  # one bytes object per topic, not per message
                            env.thread_id,
                        )
                    )
                    traced += 1
                if groups.lanes or groups.sent:  # queue groups: one member each, see _groups
                    self._to_groups(topic, header, payload, env, row, who)
                if exporting:
                    federation.export(topic, header, payload, _STANDARD)
                try:
                    raw_send(xpub, topic, _NOBLOCK_MORE)
                except zmq.Again:
                    self._forward_blocked(topic, header, payload, row)
                    shedding = bool(self._shed_until)
                    continue
                raw_send(xpub, header, _SNDMORE)
                raw_send(xpub, payload, 0)
                row[FORWARDED] += 1
                if shedding:
                    self._drop(row, DROPPED, "stalled", _SHED, topic)
        finally:
            if traced:
                traces.messages_seen += traced

    def _to_groups(  # noqa: PLR0917 - the hot loop's values, passed on as they are
        self, topic: bytes, header: bytes, payload: bytes, env: Any, row: Row, who: str
    ) -> None:
        groups = self.groups
        kind = env.kind
        if kind >= REPLY:
            groups.answered(env.correlation_id, topic)
            return
        if topic[:1] == b"$" or not groups.lanes:
            return  # inboxes, probes, $sys: never to a group
        request = None
        reply_to = env.reply_to
        if kind == REQUEST and reply_to is not None and self._inbox_of(reply_to, who):
            request = env.id  # remembered, to answer if its member dies
        if groups.deliver(topic, header, payload, request, reply_to, deadline=env.deadline):
            self._drop(row, DROPPED, "stalled", "a queue-group member's queue is full", topic)

    def _inbox_of(self, reply_to: str, who: str) -> bool:
        """Whether ``reply_to`` is an inbox of the requester's own identity (the only
        place the broker will send an error on its behalf)."""
        if self._guard is None:
            return reply_to.startswith("$inbox.")
        return reply_to.startswith(f"$inbox.{who}.")

    def _send_now(self, topic: bytes, header: bytes, payload: bytes) -> bool:
        """One message to subscribers without waiting: False when a queue is full (or the
        topic is too long to be one)."""
        if len(topic) > MAX_TOPIC_BYTES:
            self.drops.drop("group_topic", "a queue-group member topic over the limit")
            return False
        try:
            send_message(self._xpub, topic, header, payload)
        except zmq.Again:
            return False
        return True

    def _fail_request(self, reply_to: str, correlation: bytes, data: dict[str, Any]) -> None:
        """The broker's error reply to a request no one will answer."""
        mid = self._ids.next()
        origin = None if self._guard is None else self._name
        header = pack_header(
            ERROR, mid, self._name, time.time(), correlation, None, None, None, 0, mid,
            None, None, origin,
        )  # fmt: skip
        with contextlib.suppress(zmq.Again, LoomError):  # a topic that cannot be: no reply
            send_message(self._xpub, encode_topic(reply_to), header, encode_payload(data))

    def _intern(self, sender: str) -> str:
        """The one object the trace buffer keeps for ``sender`` (``(other)`` once
        ``MAX_SENDERS`` names are known: the buffer's size stays bounded)."""
        if len(self._senders) >= MAX_SENDERS:
            return "(other)"
        self._senders[sender] = sender
        return sender

    def _new_row(self, topic: bytes) -> Row:
        """Counters for a topic not seen yet (validated once, then found in ``rows``).

        Raises:
            ProtocolError: the topic is empty, too long or not UTF-8.
        """
        decode_topic(topic)
        return self.stats.row(topic)

    def _forward_blocked(self, topic: bytes, header: bytes, payload: bytes, row: Row) -> None:
        """A subscriber's queue is full: wait up to the stall timeout (backpressure), then
        shed: lossy delivery for ``10 * stall_timeout``, so the subscribers that keep up
        go on receiving."""
        xpub = self._xpub
        try:  # blocking send, bounded by SNDTIMEO = stall_timeout
            xpub.send(topic, _SNDMORE)
        except zmq.Again:
            self._shed_until = time.monotonic() + 10 * self._stall_timeout
            xpub.setsockopt(_XPUB_NODROP, 0)
            self._log.warning(
                "subscriber stalled: shedding (lossy delivery)",
                topic=topic.decode(),
                shed_seconds=10 * self._stall_timeout,
            )
            xpub.send(topic, _NOBLOCK_MORE)
            self._drop(row, DROPPED, "stalled", _SHED, topic)
        xpub.send(header, _SNDMORE)
        xpub.send(payload)
        row[FORWARDED] += 1

    def _drop(self, row: Row, column: int, reason: str, message: str, topic: bytes) -> None:
        row[column] += 1
        self.drops.drop(reason, message, topic=topic.decode())

    def _end_shed(self) -> None:
        self._shed_until = 0.0
        self._xpub.setsockopt(_XPUB_NODROP, 1)
        self._log.info("shedding over: lossless delivery again")

    def publish(self, topic: str, data: Any, sender: str) -> None:
        """Publish the broker's own event (``$sys.*``) to subscribers. Never blocks the
        broker: a subscriber whose queue is full misses it (counted as ``stalled``)."""
        mid = self._ids.next()
        now = time.time()
        origin = None if self._guard is None else sender
        header = pack_header(
            EVENT, mid, sender, now, None, None, None, None, 0, mid, None, None, origin
        )
        self.forward(encode_topic(topic), header, encode_payload(data))

    def forward(self, topic: bytes, header: bytes, payload: bytes) -> None:
        """Send one already validated message to live subscribers (a durable event once
        logged, a ``$sys`` event), without blocking: a full subscriber misses it, counted.
        A durable event on an exported topic goes to the federation link too."""
        if self.federation.link is not None:  # (it leaves the broker's $sys events out)
            self.federation.export(topic, header, payload, _RELIABLE)
        self._send_once(topic, header, payload)

    def deliver(self, topic: bytes, header: bytes, payload: bytes) -> None:
        """An event from the federation, to local subscribers only: delivered as a local
        publish is, a full subscriber holding it up to the stall timeout (then shed)."""
        if self._shed_until and time.monotonic() >= self._shed_until:
            self._end_shed()
        row = self.stats.row(topic)
        row[PUBLISHED] += 1
        try:
            send_message(self._xpub, topic, header, payload)
        except zmq.Again:
            self._forward_blocked(topic, header, payload, row)
            return
        row[FORWARDED] += 1
        if self._shed_until:
            self._drop(row, DROPPED, "stalled", _SHED, topic)

    def _send_once(self, topic: bytes, header: bytes, payload: bytes) -> None:
        """:meth:`forward`'s delivery: never waits, a full subscriber misses it."""
        row = self.stats.row(topic)
        row[PUBLISHED] += 1
        with contextlib.suppress(ProtocolError):  # durable and the broker's own are traced too
            env = decode_header(header)
            if env.trace_id is not None:
                sender = self._senders.get(env.sender) or self._intern(env.sender)
                record = (env.trace_id, env.id, env.parent_id, sender, env.timestamp)
                self.traces.messages.append((*record, env.kind, row[TOPIC], env.thread_id))
                self.traces.messages_seen += 1
        try:
            send_message(self._xpub, topic, header, payload)
        except zmq.Again:
            self._drop(row, DROPPED, "stalled", "a subscriber's queue is full", topic)
            return
        row[FORWARDED] += 1

    def read_subscriptions(self) -> None:
        """Track the prefixes subscribers hold (the XPUB reports first-sub/last-unsub);
        with a guard, grant each subscription its subscriber's identity may hold."""
        try:
            if self._guard is not None:
                self._grant_subscriptions(self._guard)
                return
            while True:
                try:
                    frame = self._xpub.recv(_NOBLOCK)
                except zmq.Again:
                    return
                if frame[:1] == b"\x01":
                    if len(self.subscriptions) < MAX_SUBSCRIPTIONS:
                        self._held(frame[1:])
                elif frame[:1] == b"\x00":
                    self._released(frame[1:])
        finally:
            self.federation.flush()

    def _held(self, prefix: bytes) -> None:
        """Some subscriber holds ``prefix`` now."""
        if prefix not in self.subscriptions:
            self.subscriptions.add(prefix)
            self.federation.interest(prefix, True)

    def _released(self, prefix: bytes) -> None:
        """No subscriber holds ``prefix`` any more."""
        if prefix in self.subscriptions:
            self.subscriptions.discard(prefix)
            self.federation.interest(prefix, False)

    def _grant_subscriptions(self, guard: Guard) -> None:
        """Manual mode: every (un)subscription of every subscriber arrives here, with
        the identity of its connection; a granted one is applied to that subscriber's
        pipe (``setsockopt`` acts on the pipe of the message just read), a refused one
        never is. A subscriber's subscriptions go with it when it disconnects (libzmq
        then reports each prefix no one requests any more, without an identity)."""
        xpub, counts = self._xpub, self.granted
        in_step = True
        while True:
            try:
                frame = xpub.recv(_NOBLOCK, copy=False)
            except zmq.Again:
                return  # both of libzmq's queues are empty: in step again
            data = frame.bytes
            flag, asked = data[:1], data[1:]
            who = user_id(frame)
            if flag not in (b"\x00", b"\x01"):
                # libzmq 4.3 queues a subscriber's other frames without their pipe: every
                # later subscription until the queue empties would be applied to another
                # subscriber's pipe. Apply none of them (they are lost, counted), and ban
                # the sender: no Loom peer sends such a frame.
                in_step = False
                guard.deny("send", who or "(unknown)", "a non-subscription frame to subscribers")
                guard.ban(who, "sent non-subscription frames to the subscribe socket")
                continue
            if not in_step:
                self.drops.drop("desync", "a subscription after a stray frame was not applied")
                continue
            if flag == b"\x01":
                prefix = guard.rights(who).grant(asked)
                if prefix is None:
                    what = repr(asked.decode(errors="replace")[:200])
                    guard.deny("subscribe", who or "(unknown)", f"to {what}")
                    guard.refused_subscription(who)
                    continue
                xpub.setsockopt(zmq.SUBSCRIBE, prefix)
                if prefix in counts or len(counts) < MAX_SUBSCRIPTIONS:
                    counts[prefix] = counts.get(prefix, 0) + 1
                    self._held(prefix)
            elif flag == b"\x00":
                if not who:  # a disconnect's report: no one asks for it any more
                    for prefix in (asked, asked + b"."):
                        counts.pop(prefix, None)
                        self._released(prefix)
                    continue
                prefix = guard.rights(who).grant(asked) or asked
                xpub.setsockopt(zmq.UNSUBSCRIBE, prefix)
                left = counts.get(prefix, 0) - 1
                if left > 0:
                    counts[prefix] = left
                else:
                    counts.pop(prefix, None)
                    self._released(prefix)

    def snapshot(self) -> dict[str, Any]:
        """Counters, drops by reason and live subscription prefixes."""
        snap = self.stats.snapshot()
        snap["drops"] = dict(self.drops.counts)
        snap["subscriptions"] = sorted(p.decode(errors="replace") for p in self.subscriptions)
        return snap
