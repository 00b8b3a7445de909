"""Durable topics: an LMDB log with sequence numbers, and a stream per durable subscriber.

The broker appends each durable event to the log under the next sequence number (one
write transaction per batch, committed before anything is forwarded or acknowledged),
remembers its message id (a publisher that re-sends after a reconnect is acknowledged
again, not logged twice), and keeps, per durable subscriber name, the last sequence it
acknowledged. A subscriber's stream sends what it has not acknowledged, in order, from
the log, at most ``window`` unacknowledged at a time: catch-up and live are one path.
"""

from __future__ import annotations

import contextlib
import errno
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import msgpack

from loom.broker._settings import BrokerSettings
from loom.errors import PatternError, ProtocolError, StoreError, StoreFullError
from loom.logs import DropCounter
from loom.protocol import (
    DELIVER,
    PUBACK,
    Dack,
    Dsub,
    Pattern,
    Replay,
    decode_header,
    decode_topic,
    header_id,
)

__all__ = ["DurableLog", "DurablePlane", "Streams"]

Send = Callable[[bytes, list[bytes]], bool]
Forward = Callable[[bytes, bytes, bytes], None]
Ack = tuple[bytes, int | None, str | None]
"""(message id, sequence number, error code)"""
_MAX_REPLAY = 1000
_MAX_REPLAY_SCAN = 20_000
"""Log records one REPLAY examines at most (it answers ``next`` to go on)."""
_MAX_REPLAY_BYTES = 4 << 20
_MAX_STREAMS = 10_000
_MAX_NAME_BYTES = 200
"""Bytes of a durable subscription name (LMDB keys stop at 511)."""
_BATCH_MAX = 1000

_SEQ = struct.Struct(">Q")


def _store_error(exc: lmdb.Error, what: str) -> StoreError:
    """The error for an LMDB failure: full (its map, or the disk) or anything else."""
    full = isinstance(exc, lmdb.MapFullError) or getattr(exc, "errno", None) == errno.ENOSPC
    full = full or "No space left" in str(exc)
    return (StoreFullError if full else StoreError)(f"durable log {what}: {exc}")


class DurableLog:
    """The LMDB environment of one broker's durable topics.

    Args:
        path: a directory (created if missing).
        map_size: the largest size the log may reach, bytes.
        max_age: seconds an event is kept (0: forever).
        max_bytes: the log's payload bytes beyond which the oldest events go (0: no cap).
        clock: Unix seconds.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        map_size: int = 1 << 30,
        max_age: float = 0.0,
        max_bytes: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(path), map_size=map_size, max_dbs=4, subdir=True)
        self._log = self.env.open_db(b"log")
        self._ids = self.env.open_db(b"ids")
        self._cursors = self.env.open_db(b"cursors")
        self._meta = self.env.open_db(b"meta")
        self._max_age = max_age
        self._max_bytes = max_bytes
        self._clock = clock
        with self.env.begin() as txn:
            cursor = txn.cursor(self._log)
            last_key = _SEQ.unpack(cursor.key())[0] if cursor.last() else 0
            stored = txn.get(b"last_seq", db=self._meta)
            # numbers are never reused, even when retention emptied the log
            self.last_seq = max(last_key, _SEQ.unpack(stored)[0] if stored else 0)
            self.first_seq = _SEQ.unpack(cursor.key())[0] if cursor.first() else 0
            self.bytes = sum(len(value) for _, value in cursor)

    def append(self, events: list[tuple[bytes, bytes, bytes, bytes]]) -> list[tuple[int, bool]]:
        """Log ``(id, topic, header, payload)`` events in one transaction.

        Returns:
            Per event, its sequence number and whether it is new (False: its id was
            logged before, under that number).

        Raises:
            StoreFullError: the map or the disk is full; nothing of the batch is written.
            StoreError: the log cannot be written (I/O); nothing of the batch is written.
        """
        seq = previous = self.last_seq
        out: list[tuple[int, bool]] = []
        added = 0
        now = self._clock()
        try:
            with self.env.begin(write=True) as txn:
                seen: dict[bytes, int] = {}
                for mid, topic, header, payload in events:
                    known = seen.get(mid)
                    if known is None:
                        raw = txn.get(mid, db=self._ids)
                        known = _SEQ.unpack(raw)[0] if raw is not None else None
                    if known is not None:
                        out.append((known, False))
                        continue
                    seq += 1
                    record = msgpack.packb((topic, header, payload, now, mid))
                    if not txn.put(_SEQ.pack(seq), record, db=self._log, append=True):
                        raise StoreError(f"sequence {seq} is already logged (shared data_dir?)")
                    txn.put(mid, _SEQ.pack(seq), db=self._ids)
                    seen[mid] = seq
                    added += len(record)
                    out.append((seq, True))
                txn.put(b"last_seq", _SEQ.pack(seq), db=self._meta)
        except lmdb.Error as exc:  # map full, disk full (ENOSPC), I/O error
            raise _store_error(exc, "cannot be written") from exc
        self.last_seq = seq
        if not self.first_seq and seq > previous:  # the log was empty
            self.first_seq = previous + 1
        self.bytes += added
        return out

    def read(self, after: int, limit: int) -> Iterator[tuple[int, bytes, bytes, bytes, float]]:
        """Up to ``limit`` events with sequence numbers above ``after``, in order."""
        with self.env.begin() as txn:
            cursor = txn.cursor(self._log)
            if not cursor.set_range(_SEQ.pack(after + 1)):
                return
            for count, (key, value) in enumerate(cursor):
                if count >= limit:
                    return
                topic, header, payload, when, _ = msgpack.unpackb(value)
                yield _SEQ.unpack(key)[0], topic, header, payload, when

    def acked(self, name: str) -> int:
        """The last sequence number subscriber ``name`` acknowledged (0: none)."""
        with self.env.begin() as txn:
            raw = txn.get(name.encode(), db=self._cursors)
        return _SEQ.unpack(raw)[0] if raw is not None else 0

    def save_acks(self, acks: dict[str, int]) -> None:
        """Persist subscribers' acknowledged positions (one transaction).

        Raises:
            StoreFullError: the map or the disk is full.
            StoreError: the log cannot be written.
        """
        try:
            with self.env.begin(write=True) as txn:
                for name, seq in acks.items():
                    txn.put(name.encode(), _SEQ.pack(seq), db=self._cursors)
        except lmdb.Error as exc:  # map full, disk full (ENOSPC), I/O error
            raise _store_error(exc, "cannot be written") from exc

    def trim(self, limit: int = 10_000) -> int:
        """Drop the oldest events past the age and size limits, at most ``limit`` per
        call (the broker calls it every second); returns how many.

        Raises:
            StoreError: the log cannot be written (``StoreFullError``: it is full).
        """
        if not (self._max_age or self._max_bytes):
            return 0
        cutoff = self._clock() - self._max_age if self._max_age else None
        dropped = freed = 0
        try:
            with self.env.begin(write=True) as txn:
                cursor = txn.cursor(self._log)
                while dropped < limit and cursor.first():
                    value = cursor.value()
                    when, mid = msgpack.unpackb(value)[3:5]
                    too_old = cutoff is not None and when < cutoff
                    too_big = bool(self._max_bytes) and self.bytes - freed > self._max_bytes
                    if not (too_old or too_big):
                        break
                    freed += len(value)
                    txn.delete(mid, db=self._ids)
                    cursor.delete()
                    dropped += 1
                first = _SEQ.unpack(cursor.key())[0] if cursor.first() else 0
        except lmdb.Error as exc:
            raise _store_error(exc, "cannot be trimmed") from exc
        self.bytes -= freed  # only once committed
        self.first_seq = first
        return dropped

    def stats(self) -> dict[str, Any]:
        return {
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "bytes": self.bytes,
            "map_size": self.env.info()["map_size"],
        }

    def close(self) -> None:
        self.env.close()


class Stream:
    """One durable subscriber: its patterns, where it is, who receives."""

    __slots__ = (
        "acked",
        "blocked",
        "dirty",
        "identity",
        "inflight",
        "inflight_bytes",
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
        self.inflight_bytes = 0
        self.dirty = False
        """``acked`` moved since it was last persisted."""
        self.blocked = False
        """A send failed (the peer's queue is full): wait for an ack or the tick."""

    def wants(self, topic: str) -> bool:
        return any(p.matches(topic) for p in self.patterns)

    def settle(self, seq: int) -> None:
        """Deliveries up to ``seq`` are acknowledged; with none left in flight, what was
        examined since (events that did not match) counts as acknowledged too."""
        inflight = self.inflight
        while inflight and inflight[0][0] <= seq:
            self.inflight_bytes -= inflight.popleft()[1]
        position = inflight[0][0] - 1 if inflight else self.sent
        if position > self.acked:
            self.acked = position
            self.dirty = True


class Streams:
    """The durable subscribers and their flow control.

    Args:
        log: the durable log.
        send: sends frames to a peer identity; False if it cannot now.
        window: deliveries a subscriber may hold unacknowledged (keep it below the
            peer queue's high-water mark, or answers to the peer find its queue full).
        window_bytes: bytes of deliveries a subscriber may hold unacknowledged (one is
            always allowed, however large).
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

    def subscribe(self, name: str, identity: bytes, patterns: list[str]) -> Stream:
        """Start (or take over) stream ``name`` from its last acknowledged event; it
        sends nothing until ``pump`` (the caller answers first).

        Raises:
            PatternError: a pattern is invalid.
        """
        compiled = [Pattern(p) for p in patterns]
        old = self.streams.get(name)
        if old is not None:
            self._by_peer.get(old.identity, set()).discard(name)
        acked = old.acked if old is not None else self.log.acked(name)
        stream = self.streams[name] = Stream(name, identity, compiled, acked)
        stream.dirty = old is not None and old.dirty
        self._by_peer.setdefault(identity, set()).add(name)
        return stream

    def ack(self, name: str, identity: bytes, seq: int) -> None:
        stream = self.streams.get(name)
        if stream is None or stream.identity != identity:
            return
        stream.settle(min(seq, stream.sent))
        stream.blocked = False
        self.pump(stream)

    def pump_all(self, *, retry: bool = False) -> None:
        """Pump every stream (``retry``: those a full queue blocked too)."""
        for stream in self.streams.values():
            if retry:
                stream.blocked = False
            if not stream.blocked:
                self.pump(stream)

    def pump(self, stream: Stream) -> None:
        """Send what the window allows: the events after ``sent`` that match. Events
        that do not match take no room; with nothing in flight they count as handled."""
        log, window, window_bytes = self.log, self.window, self.window_bytes
        while stream.sent < log.last_seq and len(stream.inflight) < window:
            batch = list(log.read(stream.sent, window))
            if not batch:
                stream.sent = log.last_seq  # a gap (retention): nothing left to examine
                break
            for seq, topic, header, payload, _ in batch:
                if stream.wants(topic.decode()):
                    size = len(topic) + len(header) + len(payload)
                    full = stream.inflight_bytes + size > window_bytes and stream.inflight
                    if len(stream.inflight) >= window or full:
                        return
                    meta = msgpack.packb((seq, stream.name))
                    if not self._send(stream.identity, [DELIVER, meta, topic, header, payload]):
                        stream.blocked = True  # gone or full: an ack, or the tick, resumes
                        return
                    stream.inflight.append((seq, size))
                    stream.inflight_bytes += size
                stream.sent = seq
        if not stream.inflight:
            stream.settle(stream.sent)

    def gone(self, identity: bytes) -> None:
        """A subscriber's session ended: keep its position, stop sending."""
        leaving = self._by_peer.pop(identity, set())
        if leaving:
            with contextlib.suppress(StoreError):  # logged at the tick; may repeat events
                self.save()
        for name in leaving:
            del self.streams[name]

    def save(self) -> None:
        """Persist the positions that moved.

        Raises:
            StoreError: the log cannot be written (``StoreFullError``: it is full).
        """
        dirty = {s.name: s.acked for s in self.streams.values() if s.dirty}
        if dirty:
            self.log.save_acks(dirty)
            for stream in self.streams.values():
                stream.dirty = False


class DurablePlane:
    """The broker's durable topics: PUBLISH batches, DSUB/DACK streams, REPLAY.

    Args:
        log: the durable log, or None (then every PUBLISH is answered ``NO_STORE``).
        settings: the broker's settings (``max_payload``, ``queue_bytes``: a subscriber
            holds at most half of it unacknowledged).
        send: sends frames to a peer identity.
        forward: hands a committed event to the pub/sub plane (live subscribers).
        window: unacknowledged events a durable subscriber may hold (keep it below the
            peer queue's high-water mark).
        logger: a structlog logger.
        batch_bytes: a batch is committed at once when it holds this many bytes.
        commit_delay: seconds a batch may wait for more events before it is committed
            (group commit: one fsync costs about as much for 1 event as for 1000).
        clock: monotonic seconds.
    """

    def __init__(
        self,
        log: DurableLog | None,
        settings: BrokerSettings,
        *,
        send: Send,
        forward: Forward,
        window: int,
        logger: Any,
        batch_bytes: int = 8 << 20,
        commit_delay: float = 0.002,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self._send = send
        self._forward = forward
        self._logger = logger
        self._max_payload = settings.max_payload
        window_bytes = max(1, settings.queue_bytes // 2)
        self.streams = (
            Streams(log, send, window=window, window_bytes=window_bytes)
            if log is not None
            else None
        )
        self._batch: list[tuple[bytes, bytes, bytes, bytes, bytes]] = []
        self._batch_bytes = 0
        self._max_batch_bytes = batch_bytes
        self._refused = "STORE_FULL"
        """The PUBACK error of the events the last commit refused (``STORE_FAILED``: the
        log could not be written, for another reason than being full)."""
        self._batch_since = 0.0
        self._commit_delay = commit_delay
        self._clock = clock
        self.drops = DropCounter(logger)
        self.counts = {"published": 0, "duplicates": 0, "refused": 0, "trimmed": 0}
        self._next_save = 0.0

    def on_publish(self, identity: bytes, frames: list[bytes]) -> None:
        """Queue a PUBLISH for the batch; bad ones are counted and answered."""
        if len(frames) != 3:
            self.drops.drop("frames", f"PUBLISH with {len(frames)} frames", plane="durable")
            return
        topic, header, payload = frames
        try:
            decode_topic(topic)
            mid = decode_header(header).id
        except ProtocolError as exc:
            self.drops.drop(exc.reason, str(exc), plane="durable")
            readable = header_id(header)  # tell the publisher, if it can tell which
            if readable is not None:
                self._ack(identity, readable, None, "MALFORMED")
            return
        if len(payload) > self._max_payload:
            self.drops.drop("oversized", f"durable payload of {len(payload)} bytes")
            self._ack(identity, mid, None, "TOO_LARGE")
            return
        if self.log is None:
            self._ack(identity, mid, None, "NO_STORE")
            return
        if not self._batch:
            self._batch_since = self._clock()
        self._batch.append((identity, mid, topic, header, payload))
        self._batch_bytes += len(topic) + len(header) + len(payload)
        if self._batch_bytes >= self._max_batch_bytes:
            self.flush(force=True)

    def due(self) -> float | None:
        """When the waiting batch must be committed (monotonic), if one waits."""
        return self._batch_since + self._commit_delay if self._batch else None

    def flush(self, *, force: bool = False) -> None:
        """Commit the batch (one transaction), then forward and acknowledge it. Unless
        forced, a small batch younger than ``commit_delay`` waits for company."""
        if not self._batch:
            return
        young = self._clock() < self._batch_since + self._commit_delay
        if young and not force and len(self._batch) < _BATCH_MAX:
            return
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        if self.log is None or self.streams is None:
            return
        results = self._append_what_fits(batch)
        acks: dict[bytes, list[Ack]] = {}
        for (identity, mid, topic, header, payload), result in zip(batch, results, strict=True):
            if result is None:
                self.counts["refused"] += 1
                acks.setdefault(identity, []).append((mid, None, self._refused))
                continue
            seq, new = result
            if new:
                self.counts["published"] += 1
                self._forward(topic, header, payload)
            else:
                self.counts["duplicates"] += 1
            acks.setdefault(identity, []).append((mid, seq, None))
        for identity, some in acks.items():  # one PUBACK per publisher and commit
            self._send_acks(identity, some)
        self.streams.pump_all()

    def _append_what_fits(
        self, batch: list[tuple[bytes, bytes, bytes, bytes, bytes]]
    ) -> list[tuple[int, bool] | None]:
        """Log the batch; when the log is full, log the halves that still fit (in order),
        and answer None for the events that do not."""
        assert self.log is not None
        try:
            return list(self.log.append([(mid, t, h, p) for _, mid, t, h, p in batch]))
        except StoreError as exc:
            self._refused = "STORE_FULL" if isinstance(exc, StoreFullError) else "STORE_FAILED"
            if len(batch) == 1:
                self._logger.error("durable event refused", error=str(exc))
                return [None]
        half = len(batch) // 2
        first = self._append_what_fits(batch[:half])
        if first[-1] is None:  # keep the log in publish order: nothing after a refusal
            return [*first, *([None] * (len(batch) - half))]
        return [*first, *self._append_what_fits(batch[half:])]

    def _ack(self, identity: bytes, mid: bytes, seq: int | None, error: str | None) -> None:
        self._send_acks(identity, [(mid, seq, error)])

    def _send_acks(self, identity: bytes, acks: list[Ack]) -> None:
        self._send(identity, [PUBACK, msgpack.packb(acks), b""])

    def subscribe(self, identity: bytes, body: Dsub) -> dict[str, Any]:
        """DSUB: the answer's body (``acked``, or an error ``code`` and ``message``)."""
        if self.streams is None or self.log is None:
            return {"code": "NO_STORE", "message": "this broker has no data_dir"}
        if len(body.name.encode()) > _MAX_NAME_BYTES:
            message = f"a subscription name is at most {_MAX_NAME_BYTES} bytes"
            return {"code": "MALFORMED", "message": message}
        streams = self.streams
        if body.name not in streams.streams and len(streams.streams) >= _MAX_STREAMS:
            return {"code": "TOO_MANY", "message": f"{_MAX_STREAMS} durable subscriptions"}
        try:
            stream = streams.subscribe(body.name, identity, body.patterns)
        except PatternError as exc:
            return {"code": "MALFORMED", "message": str(exc)}
        return {"acked": stream.acked, "last_seq": self.log.last_seq, "window": streams.window}

    def start(self, name: str) -> None:
        """Begin sending subscription ``name`` what it has not acknowledged (after its
        DSUB was answered: the answer must not queue behind a window of deliveries)."""
        streams = self.streams
        stream = streams.streams.get(name) if streams is not None else None
        if streams is not None and stream is not None:
            streams.pump(stream)

    def ack(self, identity: bytes, body: Dack) -> None:
        if self.streams is not None:
            self.streams.ack(body.name, identity, body.seq)

    def replay(self, body: Replay) -> dict[str, Any]:
        """REPLAY: up to ``limit`` events matching ``pattern`` after ``since`` (a sequence
        number) or at/after ``since_time``; ``next`` continues."""
        if self.log is None:
            return {"code": "NO_STORE", "message": "this broker has no data_dir"}
        try:
            pattern = Pattern(body.pattern)
        except PatternError as exc:
            return {"code": "MALFORMED", "message": str(exc)}
        since_time, limit = body.since_time, body.limit
        limit = limit if limit is not None and 0 < limit <= _MAX_REPLAY else _MAX_REPLAY
        after = max(body.since, self.log.first_seq - 1)
        events: list[list[Any]] = []
        scanned = size = 0
        while len(events) < limit and scanned < _MAX_REPLAY_SCAN and size < _MAX_REPLAY_BYTES:
            chunk = list(self.log.read(after, _MAX_REPLAY))
            if not chunk:
                after = self.log.last_seq
                break
            for seq, topic, header, payload, when in chunk:
                after = seq
                scanned += 1
                ok_time = since_time is None or when >= since_time
                if ok_time and pattern.matches(topic.decode()):
                    events.append([seq, when, topic, header, payload])
                    size += len(payload) + len(header)
                    if len(events) >= limit or size >= _MAX_REPLAY_BYTES:
                        break
        return {"events": events, "next": after, "last_seq": self.log.last_seq}

    def gone(self, identity: bytes) -> None:
        if self.streams is not None:
            self.streams.gone(identity)

    def tick(self, now: float) -> None:
        """Persist moved ack positions about once a second; trim the log."""
        if self.streams is None or self.log is None or now < self._next_save:
            return
        self._next_save = now + 1.0
        self.streams.pump_all(retry=True)  # streams a full peer queue paused
        try:
            self.streams.save()
            self.counts["trimmed"] += self.log.trim()
        except StoreError as exc:
            self._logger.error("cannot save durable positions or trim", error=str(exc))

    def snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = {**self.counts, "drops": dict(self.drops.counts)}
        if self.log is not None and self.streams is not None:
            snap["log"] = self.log.stats()
            snap["subscribers"] = {
                name: {"acked": st.acked, "sent": st.sent}
                for name, st in self.streams.streams.items()
            }
        return snap

    def close(self) -> None:
        self.flush(force=True)
        if self.streams is not None:
            try:
                self.streams.save()
            except StoreError:
                self._logger.exception("cannot save durable positions at close")
        if self.log is not None:
            self.log.close()
