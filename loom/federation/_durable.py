"""Durable subscriptions in JetStream (``durable = "jetstream"``).

Each link stores its broker's reliable events in one stream, ``LOOM-<prefix>``, on
``<prefix>.dur.<topic>`` (``Nats-Msg-Id`` is the event's id: JetStream drops a copy).
A durable subscription is a consumer of that stream named after the subscription
(``loom-`` and a hash of the name), acknowledged cumulatively: wherever its subscriber
connects, the consumer knows where it stopped. The consumer's metadata names the
identity that made it; another identity may not take it over.

A broker logs reliable events whether or not its link is attached (at its start, while
the link restarts). Each time the link joins its broker it reads back the events the
broker logged in the last ``CATCH_UP`` seconds and stores them: JetStream drops the ones
it has (the same id within its duplicate window, which is longer).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import msgpack
from nats.errors import MaxPayloadError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from loom.errors import LoomError, ProtocolError, RefusedError
from loom.federation._outbox import LinkCore
from loom.federation._subjects import pattern_subjects, topic_subject
from loom.protocol import FDELIVER, FDSUB, REPLAY, Pattern, ReplayAnswer, decode_header

__all__ = ["DURABLE_WINDOW", "DurableBridge"]

_packb = msgpack.packb
_unpackb = msgpack.unpackb
DURABLE_WINDOW = 1000
"""Deliveries a durable subscriber holds unacknowledged (the consumer's max_ack_pending;
the broker tells the subscriber the same)."""
MAX_CONSUMERS = 10_000
OWNER_KEY = "loom-owner"
DUPLICATE_WINDOW = 120.0
"""Seconds JetStream remembers an event id (the stream's ``duplicate_window``)."""
CATCH_UP = 110.0
"""Seconds of the broker's log the link stores again when it joins its broker."""
CATCH_UP_RECORDS = 100_000
"""Log records read back at most, the latest."""


@dataclass
class _Consumer:
    """A durable subscription served from JetStream: its consumer, its subscriber."""

    name: str
    peer: str
    patterns: list[Pattern]
    pending: dict[int, tuple[Any, bool]] = field(default_factory=dict)
    """Stream sequence -> (the message, delivered): not yet acknowledged. A message
    the patterns refuse is kept undelivered, acknowledged with the next ones."""
    task: asyncio.Task[Any] | None = None


class DurableBridge:
    """The link's JetStream side (see the module's description)."""

    def __init__(self, link: LinkCore) -> None:
        self.link = link
        root = link.settings.subject_prefix
        self._root = f"{root}.dur"
        self.stream = f"LOOM-{root}"
        self._js: Any = None
        self._ready = asyncio.Event()
        self._out: deque[tuple[str, bytes, str]] = deque()
        """(subject, body, message id) of reliable events for the stream, in order."""
        self._out_bytes = 0
        self._wake = asyncio.Event()
        self._consumers: dict[str, _Consumer] = {}
        self._wanted: dict[str, str] = {}
        """Subscription name -> its subscriber, as the broker last said."""

    def connected(self, nc: Any) -> None:
        self._js = nc.jetstream()
        self.link.tasks.spawn(self._make_stream())

    def up(self) -> None:
        self._wake.set()

    async def _make_stream(self) -> None:
        """Create the stream (or take it as it is), retrying while JetStream elects its
        leaders (a cluster just started answers "unavailable" for a while)."""
        settings = self.link.settings
        config = StreamConfig(
            name=self.stream,
            subjects=[f"{self._root}.>"],
            num_replicas=settings.stream_replicas,
            max_age=settings.stream_max_age or None,
            max_bytes=settings.stream_max_bytes,
            storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW,
        )
        delay = 0.2
        while True:
            try:
                await self._js.add_stream(config)
                break
            except BadRequestError:  # there, with another configuration: keep it
                self.link.log.warning("the JetStream stream exists, configured otherwise")
                break
            except Exception as exc:
                self.link.drops.drop("jetstream", f"no stream yet: {type(exc).__name__}: {exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        self._ready.set()
        self._wake.set()
        self.link.log.info("JetStream stream ready", stream=self.stream)

    # --- reliable events into the stream ----------------------------------------------

    def keep(self, topic: bytes, header: bytes, body: bytes) -> None:
        """A reliable event for the stream (kept while NATS is unreachable, up to
        ``reliable_bytes``)."""
        if self._out_bytes + len(body) > self.link.settings.reliable_bytes:
            self.link.drop("backlog", "reliable events for JetStream over reliable_bytes")
            return
        mid = decode_header(header).id.hex()
        self._out.append((topic_subject(self._root, topic.decode()), body, mid))
        self._out_bytes += len(body)
        self._wake.set()

    async def store(self) -> None:
        """Publish reliable events to the stream, one acknowledged at a time, in order."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            out = self._out
            while out and self.link.up and self._ready.is_set():
                subject, body, mid = out[0]
                try:
                    headers = {"Nats-Msg-Id": mid}
                    await self._js.publish(subject, body, stream=self.stream, headers=headers)
                except MaxPayloadError:
                    self.link.drop("too_large", f"a reliable event of {len(body)} bytes")
                except Exception as exc:  # no answer in time, or the link went down
                    self.link.drops.drop("jetstream", f"not stored yet: {type(exc).__name__}")
                    await asyncio.sleep(0.2)
                    self._wake.set()
                    break
                out.popleft()
                self._out_bytes -= len(body)

    async def catch_up(self) -> None:
        """Store the reliable events on exported topics the broker logged in the last
        ``CATCH_UP`` seconds (some may have been logged while no link was attached)."""
        events = self.link.events
        assert events is not None
        exports = [Pattern(p) for p in self.link.settings.export]
        since_time = time.time() - CATCH_UP
        kept = 0
        try:
            last = (await self._replay({"since": 2**62, "limit": 1})).last_seq
            after = max(0, last - CATCH_UP_RECORDS)
            while after < last:
                answer = await self._replay({"since": after, "since_time": since_time})
                for _, _, topic, header, payload in answer.events:
                    text = topic.decode(errors="replace")
                    if not text.startswith("$") and any(p.matches(text) for p in exports):
                        body = _packb((topic, header, payload, self.link.name, True))
                        self.keep(topic, header, body)
                        kept += 1
                if answer.next <= after:
                    break
                after = answer.next
        except RefusedError as exc:
            if exc.code != "NO_STORE":  # a broker without a log has nothing to catch up
                self.link.drops.drop("catch_up", f"the broker's log not read: {exc}")
            return
        except LoomError as exc:
            self.link.drops.drop("catch_up", f"the broker's log not read: {exc}")
            return
        self.link.log.info("reliable events stored again", events=kept)

    async def _replay(self, body: dict[str, object]) -> ReplayAnswer:
        """One REPLAY page (asked again while the broker says BUSY)."""
        events = self.link.events
        assert events is not None
        while True:
            try:
                return await events.request(
                    REPLAY, {"pattern": "**", **body}, ReplayAnswer, timeout=10.0
                )
            except RefusedError as exc:
                if exc.code != "BUSY":
                    raise
                await asyncio.sleep(0.1)

    # --- durable subscriptions ---------------------------------------------------------

    def on_subscribe(self, frames: list[bytes]) -> None:
        """``FDSUB {req, name, patterns, peer, owner}`` from the broker."""
        try:
            body = _unpackb(frames[0])
            req, name, patterns = body["req"], body["name"], body["patterns"]
            peer, owner = body["peer"], body["owner"]
            if not (
                isinstance(req, int)
                and isinstance(name, str)
                and isinstance(peer, str)
                and isinstance(owner, str)
                and isinstance(patterns, list)
                and all(isinstance(p, str) for p in patterns)
            ):
                raise TypeError("a field of the wrong type")
            compiled = [Pattern(p) for p in patterns]
        except Exception as exc:
            raise ProtocolError("body", f"FDSUB: {exc}") from None
        self._wanted[name] = peer
        self.link.tasks.spawn(self._open(req, name, patterns, compiled, peer, owner))

    async def _open(  # noqa: PLR0917 - one subscription's particulars, from one FDSUB
        self,
        req: int,
        name: str,
        patterns: list[str],
        compiled: list[Pattern],
        peer: str,
        owner: str,
    ) -> None:
        """The consumer of subscription ``name`` (made if new): answer where it stands,
        then deliver to ``peer`` what it has not acknowledged."""
        durable = "loom-" + hashlib.sha256(name.encode()).hexdigest()[:40]
        filters = sorted({s for p in patterns for s in pattern_subjects(self._root, p)})
        try:
            if self._js is None:
                raise ConnectionError("JetStream is not reachable yet")
            if len(self._consumers) >= MAX_CONSUMERS and name not in self._consumers:
                raise OverflowError(f"this link serves {MAX_CONSUMERS} subscriptions")
            await asyncio.wait_for(self._ready.wait(), 10.0)
            info = await self._consumer(durable, name, filters, owner)
            stream = await self._js.stream_info(self.stream)
            sub = await self._js.pull_subscribe_bind(durable=durable, stream=self.stream)
        except _Refused as exc:
            self._answer({"req": req, "code": exc.code, "message": str(exc)})
            return
        except Exception as exc:
            message = f"JetStream: {type(exc).__name__}: {exc}"
            self._answer({"req": req, "code": "NO_STORE", "message": message})
            return
        if self._wanted.get(name) != peer:  # gone, or taken over, meanwhile
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            message = f"durable subscription {name!r} moved to another peer meanwhile"
            self._answer({"req": req, "code": "NO_STORE", "message": message})
            return
        acked = info.ack_floor.stream_seq if info.ack_floor is not None else 0
        self._answer({"req": req, "acked": acked, "last_seq": stream.state.last_seq})
        self._stop(name)
        consumer = self._consumers[name] = _Consumer(name, peer, compiled)
        consumer.task = self.link.tasks.spawn(self._pull(consumer, sub))

    async def _consumer(self, durable: str, name: str, filters: list[str], owner: str) -> Any:
        """The consumer's info: made now, or there already for the same owner and
        patterns (else refused)."""
        try:
            info = await self._js.consumer_info(self.stream, durable)
        except NotFoundError:
            config = ConsumerConfig(
                durable_name=durable,
                description=f"loom durable subscription {name}"[:1024],
                ack_policy=AckPolicy.ALL,
                deliver_policy=DeliverPolicy.ALL,
                max_ack_pending=DURABLE_WINDOW,
                ack_wait=30.0,
                filter_subject=filters[0] if len(filters) == 1 else None,
                filter_subjects=filters if len(filters) > 1 else None,
                metadata={OWNER_KEY: owner},
            )
            return await self._js.add_consumer(self.stream, config)
        made_by = (info.config.metadata or {}).get(OWNER_KEY)
        if made_by != owner:
            raise _Refused("DENIED", f"durable subscription {name!r} is another identity's")
        had = sorted(info.config.filter_subjects or [info.config.filter_subject or ""])
        if had != filters:
            raise _Refused(
                "MALFORMED",
                f"durable subscription {name!r} exists with other patterns: use another name",
            )
        return info

    def _answer(self, body: dict[str, Any]) -> None:
        assert self.link.events is not None
        self.link.events.send([FDSUB, _packb(body)])

    async def _pull(self, consumer: _Consumer, sub: Any) -> None:
        """Fetch from the consumer, deliver what its patterns match to the subscriber
        (through the broker, which checks it again)."""
        events = self.link.events
        assert events is not None
        try:
            while True:
                try:
                    messages = await sub.fetch(batch=256, timeout=1.0)
                except NatsTimeout:
                    continue
                except Exception as exc:
                    self.link.drops.drop("jetstream", f"fetch: {type(exc).__name__}: {exc}")
                    await asyncio.sleep(0.5)
                    continue
                for msg in messages:
                    await self._deliver(consumer, msg, events)
                if consumer.pending and not any(d for _, d in consumer.pending.values()):
                    self._ack_upto(consumer, max(consumer.pending))  # only refused ones
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _deliver(self, consumer: _Consumer, msg: Any, events: Any) -> None:
        seq = msg.metadata.sequence.stream
        try:
            topic, header, payload, _, _ = _unpackb(msg.data)
            if not (type(topic) is bytes and type(header) is bytes and type(payload) is bytes):
                raise TypeError("topic, header and payload are bytes")
            wanted = any(p.matches(topic.decode()) for p in consumer.patterns)
        except Exception:
            self.link.drop("malformed", "an unreadable event in the stream")
            wanted = False
        consumer.pending[seq] = (msg, wanted)
        if not wanted:
            return
        frames = [FDELIVER, _packb((consumer.peer, seq, consumer.name)), topic, header, payload]
        if not events.send(frames):
            await events.send_waiting(frames)

    def on_ack(self, frames: list[bytes]) -> None:
        """``FDACK {name, seq}``: the subscriber handled everything up to ``seq``."""
        try:
            body = _unpackb(frames[0])
            name, seq = body["name"], body["seq"]
        except Exception as exc:
            raise ProtocolError("body", f"FDACK: {exc}") from None
        consumer = self._consumers.get(name)
        if consumer is not None and isinstance(seq, int):
            self._ack_upto(consumer, seq)

    def _ack_upto(self, consumer: _Consumer, seq: int) -> None:
        """Acknowledge the last message up to ``seq`` (the consumer acknowledges all
        before it with it)."""
        done = [s for s in consumer.pending if s <= seq]
        if not done:
            return
        last = consumer.pending[max(done)][0]
        for s in done:
            del consumer.pending[s]
        self.link.tasks.spawn(last.ack())

    def on_gone(self, frames: list[bytes]) -> None:
        """``FDGONE {name}``: its subscriber is gone (the position stays in JetStream)."""
        with contextlib.suppress(Exception):
            name = _unpackb(frames[0])["name"]
            self._wanted.pop(name, None)
            self._stop(name)

    def _stop(self, name: str) -> None:
        consumer = self._consumers.pop(name, None)
        if consumer is not None and consumer.task is not None:
            consumer.task.cancel()


class _Refused(Exception):
    """A durable subscription refused, with the code the subscriber is answered."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
