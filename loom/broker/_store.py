"""The durable log: LMDB, events numbered by one sequence across topics, the ids already
logged, and each durable subscriber's last acknowledged position."""

from __future__ import annotations

import errno
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import msgpack

from loom.errors import StoreError, StoreFullError

__all__ = ["DurableLog"]

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

    def acked(self, name: str) -> int | None:
        """The last sequence number subscriber ``name`` acknowledged (None: the log keeps
        no position for that name)."""
        with self.env.begin() as txn:
            raw = txn.get(name.encode(), db=self._cursors)
        return _SEQ.unpack(raw)[0] if raw is not None else None

    def names(self) -> int:
        """How many subscription names the log keeps a position for."""
        with self.env.begin() as txn:
            return int(txn.stat(self._cursors)["entries"])

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
            "names": self.names(),
        }

    def close(self) -> None:
        self.env.close()
