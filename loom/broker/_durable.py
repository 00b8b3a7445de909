"""Durable topics: PUBLISH batches committed to the log before anything sees them, the
durable subscribers' streams (``_streams``), and REPLAY.

The broker appends each durable event to the log under the next sequence number (one
write transaction per batch, committed before anything is forwarded or acknowledged),
remembers its message id (a publisher that re-sends after a reconnect is acknowledged
again, not logged twice), and keeps, per durable subscriber name, the last sequence it
acknowledged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgpack

from loom.broker._settings import BrokerSettings
from loom.broker._store import DurableLog
from loom.broker._streams import StreamRefused, Streams
from loom.errors import PatternError, ProtocolError, StoreError, StoreFullError
from loom.logs import DropCounter
from loom.protocol import (
    PUBACK,
    Dack,
    Dsub,
    Pattern,
    Replay,
    decode_header,
    decode_topic,
    header_id,
)

__all__ = ["DurablePlane"]

Send = Callable[[bytes, list[bytes]], bool]
Forward = Callable[[bytes, bytes, bytes], None]
Ack = tuple[bytes, int | None, str | None]
"""(message id, sequence number, error code)"""
_MAX_REPLAY = 1000
_MAX_REPLAY_SCAN = 20_000
"""Log records one REPLAY examines at most (it answers ``next`` to go on)."""
_MAX_REPLAY_BYTES = 4 << 20
_MAX_NAME_BYTES = 200
"""Bytes of a durable subscription name (LMDB keys stop at 511)."""
_BATCH_MAX = 1000


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
        self._catching_up = False
        """The last catch-up examined records: more may follow at once."""

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
        """When the durable plane needs the loop again (monotonic): at once while streams
        catch up, else when the waiting batch must be committed, if one waits."""
        if self._catching_up:
            return self._clock()
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
        logged: list[tuple[int, bytes, bytes, bytes]] = []
        for (identity, mid, topic, header, payload), result in zip(batch, results, strict=True):
            if result is None:
                self.counts["refused"] += 1
                acks.setdefault(identity, []).append((mid, None, self._refused))
                continue
            seq, new = result
            if new:
                self.counts["published"] += 1
                self._forward(topic, header, payload)
                logged.append((seq, topic, header, payload))
            else:
                self.counts["duplicates"] += 1
            acks.setdefault(identity, []).append((mid, seq, None))
        for identity, some in acks.items():  # one PUBACK per publisher and commit
            self._send_acks(identity, some)
        self.streams.offer(logged)  # from memory to the streams that were caught up

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

    def refuse(self, identity: bytes, mid: bytes, code: str) -> None:
        """Acknowledge a PUBLISH that was not taken (``DENIED``...)."""
        self._ack(identity, mid, None, code)

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
        try:
            stream = streams.subscribe(body.name, identity, body.patterns)
        except PatternError as exc:
            return {"code": "MALFORMED", "message": str(exc)}
        except StreamRefused as exc:
            return {"code": exc.code, "message": str(exc)}
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

    def replay(self, body: Replay, budget: int = _MAX_REPLAY_BYTES) -> dict[str, Any]:
        """REPLAY: up to ``limit`` events matching ``pattern`` after ``since`` (a sequence
        number) or at/after ``since_time``, ``budget`` bytes of them at most (one event
        always fits); ``next`` continues."""
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
        full = False
        while len(events) < limit and scanned < _MAX_REPLAY_SCAN and not full:
            chunk = list(self.log.read(after, _MAX_REPLAY))
            if not chunk:
                after = self.log.last_seq
                break
            for seq, topic, header, payload, when in chunk:
                ok_time = since_time is None or when >= since_time
                if ok_time and pattern.matches(topic.decode()):
                    grown = size + len(topic) + len(header) + len(payload) + 64
                    if events and grown > budget:
                        full = True  # this one starts the next page
                        break
                    events.append([seq, when, topic, header, payload])
                    size = grown
                after = seq
                scanned += 1
                if len(events) >= limit:
                    break
        return {"events": events, "next": after, "last_seq": self.log.last_seq}

    def patterns_of(self, identity: bytes) -> dict[str, list[str]]:
        """A peer's durable subscriptions and their patterns (for the directory)."""
        return self.streams.patterns_of(identity) if self.streams is not None else {}

    def gone(self, identity: bytes) -> None:
        if self.streams is not None:
            self.streams.gone(identity)

    def tick(self, now: float) -> None:
        """Let the streams that are behind catch up a little (a bounded number of log
        records per call: the broker calls this after every poll); about once a second,
        retry the streams a full peer queue blocked, persist moved ack positions, trim."""
        if self.streams is None or self.log is None:
            return
        self._catching_up = bool(self.streams.behind) and self.streams.catch_up() > 0
        if now < self._next_save:
            return
        self._next_save = now + 1.0
        self.streams.catch_up(retry=True)
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
