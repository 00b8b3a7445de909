"""Durable subscribers: one stream per subscription name, each sending its peer what the
log holds after the name's position, in order, within a window the peer acknowledges.

Catch-up and live are one path with two speeds. A stream that is caught up gets each
newly committed batch from memory (``offer``), through a per-topic index of the streams
that want it; a stream that is behind reads the log (``pump``), a bounded number of
records at a time, so a subscriber far behind never stalls the broker. Every stream
belongs to a live peer: it is dropped when its peer goes, its position kept.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable

import msgpack

from loom.broker._peers import MAX_PATTERN_BYTES
from loom.broker._store import DurableLog
from loom.errors import StoreError
from loom.protocol import DELIVER, Pattern

__all__ = ["Stream", "StreamRefused", "Streams"]

MAX_STREAMS = 10_000
"""Durable subscriptions served at once (each holds its patterns and a window)."""
MAX_PER_PEER = 16
"""Durable subscriptions one peer may hold."""
"""Bytes of patterns one subscription may have."""
MAX_NAMES = 100_000
"""Subscription names the log keeps a position for (new names are refused past it)."""
PUMP_RECORDS = 5000
"""Log records one ``pump`` examines at most (the rest at the next one)."""
_WANTS_CACHE = 1024


class StreamRefused(Exception):
    """A DSUB cannot be served; ``code`` is the ERROR code to answer."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Stream:
    """One durable subscriber: its patterns, where it is, who receives."""

    __slots__ = (
        "_wants",
        "acked",
        "blocked",
        "dirty",
        "heard",
        "identity",
        "inflight",
        "name",
        "patterns",
        "sent",
    )

    def __init__(self, name: str, identity: bytes, patterns: list[Pattern], acked: int) -> None:
        self.name = name
        self.identity = identity
        self.patterns = patterns
        self.acked = acked
        """Everything up to here is handled (or did not match)."""
        self.sent = acked
        """The last sequence number examined for sending."""
        self.inflight: deque[tuple[int, int]] = deque()
        """(sequence number, bytes) delivered and not yet acknowledged (the window)."""
        self.dirty = False
        """``acked`` moved since it was last persisted."""
        self.heard = False
        """The peer has acknowledged something: its position is worth keeping (a name
        that never acknowledges leaves nothing in the log)."""
        self.blocked = False
        """A send failed (the peer's queue is full): wait for an ack or the tick."""
        self._wants: dict[bytes, bool] = {}

    def wants(self, topic: bytes) -> bool:
        """Whether a patterns of this stream matches ``topic`` (cached per topic)."""
        hit = self._wants.get(topic)
        if hit is None:
            text = topic.decode()
            hit = any(p.matches(text) for p in self.patterns)
            if len(self._wants) >= _WANTS_CACHE:
                self._wants.clear()
            self._wants[topic] = hit
        return hit

    def settle(self, seq: int) -> int:
        """Deliveries up to ``seq`` are acknowledged (with none left in flight, what was
        examined since counts as acknowledged too); returns the bytes freed."""
        inflight = self.inflight
        freed = 0
        while inflight and inflight[0][0] <= seq:
            freed += inflight.popleft()[1]
        position = inflight[0][0] - 1 if inflight else self.sent
        if position > self.acked:
            self.acked = position
            self.dirty = self.heard
        return freed


class Streams:
    """The durable subscribers and their flow control.

    A peer's window is shared by its streams: at most ``window`` deliveries and
    ``window_bytes`` bytes unacknowledged in all, so answers to it never find its queue
    full of deliveries.

    Args:
        log: the durable log.
        send: sends frames to a peer identity; False if it cannot now.
        window: deliveries a peer may hold unacknowledged (below its queue's mark).
        window_bytes: their bytes (one delivery always fits, however large).
    """

    def __init__(
        self,
        log: DurableLog,
        send: Callable[[bytes, list[bytes]], bool],
        *,
        window: int = 1000,
        window_bytes: int = 64 << 20,
    ) -> None:
        self.log = log
        self._send = send
        self.window = window
        self.window_bytes = window_bytes
        self.streams: dict[str, Stream] = {}
        self._by_peer: dict[bytes, set[str]] = {}
        self._load: dict[bytes, list[int]] = {}
        """Per peer: [deliveries, bytes] in flight, over all its streams."""
        self._wanting: dict[bytes, tuple[Stream, ...]] = {}
        """Per topic: the streams whose patterns match it (cleared when streams change)."""
        self.behind: set[str] = set()
        """Streams with log records to examine that no offer will bring."""

    def subscribe(self, name: str, identity: bytes, patterns: list[str]) -> Stream:
        """Start (or take over) stream ``name`` from its last acknowledged event; it
        sends nothing until ``pump`` (the caller answers first).

        Raises:
            PatternError: a pattern is invalid.
            StreamRefused: too many streams (for the broker, for the peer, or names the
                log keeps), or patterns too long.
        """
        if sum(map(len, patterns)) > MAX_PATTERN_BYTES:
            message = f"a durable subscription's patterns are at most {MAX_PATTERN_BYTES} bytes"
            raise StreamRefused("MALFORMED", message)
        old = self.streams.get(name)
        held = self._by_peer.get(identity, set()) - {name}
        if len(held) >= MAX_PER_PEER:
            raise StreamRefused("TOO_MANY", f"a peer holds at most {MAX_PER_PEER} streams")
        if old is None and len(self.streams) >= MAX_STREAMS:
            raise StreamRefused("TOO_MANY", f"{MAX_STREAMS} durable subscriptions")
        compiled = [Pattern(p) for p in patterns]
        acked = old.acked if old is not None else self.log.acked(name)
        if acked is None and self.log.names() >= MAX_NAMES:
            raise StreamRefused("TOO_MANY", f"the log keeps {MAX_NAMES} subscription names")
        if old is not None:
            self._drop(old)
        stream = self.streams[name] = Stream(name, identity, compiled, acked or 0)
        stream.dirty = old is not None and old.dirty
        stream.heard = old is not None and old.heard
        self._by_peer.setdefault(identity, set()).add(name)
        self._wanting.clear()
        self.behind.add(name)
        return stream

    def _drop(self, stream: Stream) -> None:
        names = self._by_peer.get(stream.identity)
        if names is not None:
            names.discard(stream.name)
        load = self._load.get(stream.identity)
        if load is not None:
            load[0] -= len(stream.inflight)
            load[1] -= sum(size for _, size in stream.inflight)
        del self.streams[stream.name]
        self.behind.discard(stream.name)
        self._wanting.clear()

    def ack(self, name: str, identity: bytes, seq: int) -> None:
        stream = self.streams.get(name)
        if stream is None or stream.identity != identity:
            return
        stream.heard = True
        count = len(stream.inflight)
        freed = stream.settle(min(seq, stream.sent))
        load = self._load.get(identity)
        if load is not None:
            load[0] -= count - len(stream.inflight)
            load[1] -= freed
        stream.blocked = False
        if stream.sent < self.log.last_seq:
            self.behind.add(name)
        self.pump(stream)

    def offer(self, events: list[tuple[int, bytes, bytes, bytes]]) -> None:
        """Newly committed ``(seq, topic, header, payload)`` events, in order: sent from
        memory to the streams that were caught up, through the per-topic index; a stream
        whose window fills is left to ``pump`` the rest from the log."""
        if not events:
            return
        first = events[0][0]
        ready = {s.name: s for s in self.streams.values() if s.sent == first - 1}
        for seq, topic, header, payload in events:
            for stream in self._wanted_by(topic):
                if stream.name in ready and not self._deliver(stream, seq, topic, header, payload):
                    del ready[stream.name]  # behind from here: the log serves the rest
                    self.behind.add(stream.name)
            for stream in ready.values():
                stream.sent = seq
        for stream in ready.values():
            if not stream.inflight:
                stream.settle(stream.sent)
        for name, stream in self.streams.items():
            if name not in ready and stream.sent < self.log.last_seq:
                self.behind.add(name)

    def _wanted_by(self, topic: bytes) -> tuple[Stream, ...]:
        wanting = self._wanting.get(topic)
        if wanting is None:
            wanting = tuple(s for s in self.streams.values() if s.wants(topic))
            if len(self._wanting) >= MAX_STREAMS:
                self._wanting.clear()
            self._wanting[topic] = wanting
        return wanting

    def _deliver(
        self, stream: Stream, seq: int, topic: bytes, header: bytes, payload: bytes
    ) -> bool:
        """Send one event if the peer's window and queue have room (and count it)."""
        if stream.blocked:
            return False
        load = self._load.setdefault(stream.identity, [0, 0])
        size = len(topic) + len(header) + len(payload)
        if load[0] >= self.window or (load[1] + size > self.window_bytes and load[0]):
            return False
        meta = msgpack.packb((seq, stream.name))
        if not self._send(stream.identity, [DELIVER, meta, topic, header, payload]):
            stream.blocked = True  # gone or full: an ack, or the tick, resumes it
            return False
        stream.inflight.append((seq, size))
        load[0] += 1
        load[1] += size
        stream.sent = seq
        return True

    def pump(self, stream: Stream, budget: int = PUMP_RECORDS) -> int:
        """Send what the window allows from the log: the events after ``sent`` that
        match, examining at most ``budget`` records; returns how many it examined."""
        log = self.log
        examined = 0
        while stream.sent < log.last_seq and examined < budget:
            batch = list(log.read(stream.sent, min(self.window, budget - examined)))
            if not batch:
                stream.sent = log.last_seq  # a gap (retention): nothing left to examine
                break
            for seq, topic, header, payload, _ in batch:
                examined += 1
                if stream.wants(topic) and not self._deliver(stream, seq, topic, header, payload):
                    return examined
                stream.sent = seq
        if stream.sent >= log.last_seq:
            self.behind.discard(stream.name)
            if not stream.inflight:
                stream.settle(stream.sent)
        return examined

    def catch_up(self, budget: int = PUMP_RECORDS, *, retry: bool = False) -> int:
        """Pump the streams that are behind, ``budget`` log records in all (``retry``:
        those a full peer queue blocked too); returns how many records it examined."""
        start = budget
        for name in list(self.behind):
            stream = self.streams.get(name)
            if stream is None:
                self.behind.discard(name)
                continue
            if retry:
                stream.blocked = False
            if not stream.blocked and budget > 0:
                budget -= self.pump(stream, budget)
        return start - budget

    def patterns_of(self, identity: bytes) -> dict[str, list[str]]:
        """The durable subscriptions a peer holds, with their patterns."""
        return {
            name: [p.text for p in self.streams[name].patterns]
            for name in sorted(self._by_peer.get(identity, ()))
        }

    def gone(self, identity: bytes) -> None:
        """A subscriber's session ended: keep its position, stop sending."""
        leaving = [self.streams[n] for n in self._by_peer.pop(identity, set())]
        if leaving:
            with contextlib.suppress(StoreError):  # logged at the tick; may repeat events
                self.save()
        for stream in leaving:
            self._drop(stream)
        self._load.pop(identity, None)

    def save(self) -> None:
        """Persist the positions that moved (of names that acknowledged something).

        Raises:
            StoreError: the log cannot be written (``StoreFullError``: it is full).
        """
        dirty = {s.name: s.acked for s in self.streams.values() if s.dirty}
        if dirty:
            self.log.save_acks(dirty)
            for stream in self.streams.values():
                stream.dirty = False
