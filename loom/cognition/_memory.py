"""An agent's memory: working (in process), short-term (with a TTL) and long-term tiers.

Short- and long-term items live in one LMDB environment per agent, so they survive a
restart: ``items`` (id -> the item), ``terms`` (an inverted index, term -> ids, for
keyword search) and ``expiry`` (expiry time + id, for the TTL sweep). Working memory is
a bounded list in the process, gone with it.

Search is keyword search scored with BM25. The scoring is a seam: pass a ``Scorer`` (for
example one that ranks by embedding similarity) and ``query`` uses it on the candidates.
"""

from __future__ import annotations

import collections
import math
import os
import re
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import lmdb
import msgpack

from loom.errors import MemoryStoreError

__all__ = [
    "CorpusStats",
    "KeywordScorer",
    "Memory",
    "MemoryItem",
    "MemoryStoreError",
    "Scorer",
    "Tier",
    "terms_of",
]

Tier = Literal["working", "short", "long"]
_WORD = re.compile(r"[\w][\w.-]*", re.UNICODE)
_STOP = frozenset(
    ("a", "an", "and", "are", "as", "at", "be", "by", "did", "do", "for", "from", "has",
     "have", "in", "is", "it", "its", "of", "on", "or", "that", "the", "this", "to", "was",
     "were", "what", "why", "will", "with")
)  # fmt: skip


class MemoryItem:
    """One remembered thing."""

    __slots__ = ("created", "expires", "id", "meta", "score", "tags", "text", "tier")

    def __init__(  # noqa: PLR0917 - a record
        self,
        item_id: str,
        tier: Tier,
        text: str,
        tags: Sequence[str],
        meta: dict[str, Any],
        created: float,
        expires: float | None,
    ) -> None:
        self.id = item_id
        self.tier = tier
        self.text = text
        self.tags = tuple(tags)
        self.meta = meta
        self.created = created
        self.expires = expires
        self.score = 0.0

    def words(self) -> list[str]:
        """The searchable words of its text and tags."""
        return terms_of(self.text + " " + " ".join(self.tags))

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return f"MemoryItem({self.id!r}, {self.tier}, {self.text[:40]!r})"


class Scorer(Protocol):
    """Ranks candidate items for a query (higher is better)."""

    def score(self, query: str, items: Sequence[MemoryItem], stats: CorpusStats) -> list[float]:
        """One score per item."""
        ...


class CorpusStats:
    """What BM25 needs about the stored items: their count, average length, and how many
    contain each query term."""

    __slots__ = ("average_length", "count", "document_frequency")

    def __init__(self, count: int, average_length: float, frequency: dict[str, int]) -> None:
        self.count = count
        self.average_length = average_length
        self.document_frequency = frequency


class KeywordScorer:
    """BM25 over the items' words (lower-cased, stop words dropped)."""

    def __init__(self, k1: float = 1.2, b: float = 0.75) -> None:
        self.k1 = k1
        self.b = b

    def score(self, query: str, items: Sequence[MemoryItem], stats: CorpusStats) -> list[float]:
        terms = set(terms_of(query))
        scores = []
        for item in items:
            words = item.words()
            counts = collections.Counter(words)
            total = 0.0
            for term in terms:
                tf = counts.get(term, 0)
                if not tf:
                    continue
                df = stats.document_frequency.get(term, 0)
                idf = math.log(1 + (stats.count - df + 0.5) / (df + 0.5))
                norm = self.k1 * (1 - self.b + self.b * len(words) / (stats.average_length or 1))
                total += idf * tf * (self.k1 + 1) / (tf + norm)
            scores.append(total)
        return scores


def terms_of(text: str) -> list[str]:
    """The searchable words of ``text``."""
    words = (m.group(0).lower().strip(".-") for m in _WORD.finditer(text))
    return [w for w in words if w and w not in _STOP]


class Memory:
    """An agent's memory tiers.

    Args:
        path: the LMDB directory (created); ``None``: short and long tiers in process too
            (nothing survives a restart).
        short_ttl: default seconds a short-term item lives.
        working_size: working-memory items kept (the oldest go first).
        scorer: ranks query candidates (default: BM25 keywords).
        map_size: the LMDB map size, bytes.
        clock: Unix seconds.

    Raises:
        MemoryStoreError: the store cannot be opened.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        short_ttl: float = 3600.0,
        working_size: int = 100,
        scorer: Scorer | None = None,
        map_size: int = 256 << 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.short_ttl = short_ttl
        self.scorer: Scorer = scorer or KeywordScorer()
        self.working: collections.deque[MemoryItem] = collections.deque(maxlen=working_size)
        self._clock = clock
        self._ids = 0
        self._prefix = os.urandom(4).hex()
        self._env: Any = None
        self._volatile: dict[str, MemoryItem] = {}
        self._closed = False
        if path is not None:
            try:
                path.mkdir(parents=True, exist_ok=True)
                self._env = lmdb.open(str(path), max_dbs=4, map_size=map_size, subdir=True)
                self._items = self._env.open_db(b"items")
                self._terms = self._env.open_db(b"terms", dupsort=True)
                self._expiry = self._env.open_db(b"expiry")
            except lmdb.Error as exc:
                raise MemoryStoreError(f"cannot open memory at {path}: {exc}") from exc

    # --- writing -------------------------------------------------------------------

    def add(
        self,
        text: str,
        *,
        tier: Tier = "long",
        tags: Sequence[str] = (),
        meta: dict[str, Any] | None = None,
        ttl: float | None = None,
    ) -> str:
        """Remember ``text``; its id.

        Args:
            tier: ``working`` (this process only), ``short`` (expires after ``ttl``, default
                ``short_ttl``) or ``long`` (kept until forgotten, unless ``ttl`` is given).
            tags: words to find it by besides its text.
            meta: anything msgpack-able to keep with it (a source, a step, a reference).

        Raises:
            ValueError: an unknown tier.
            MemoryStoreError: the store refused the write.
        """
        if tier not in ("working", "short", "long"):
            raise ValueError(f"unknown memory tier {tier!r}")
        if self._closed:
            raise MemoryStoreError("the memory store is closed")
        now = self._clock()
        if tier == "short" and ttl is None:
            ttl = self.short_ttl
        self._ids += 1
        item_id = f"{self._prefix}-{self._ids}"
        item = MemoryItem(
            item_id, tier, text, tags, dict(meta or {}), now, None if ttl is None else now + ttl
        )
        if tier == "working":
            self.working.append(item)
        elif self._env is None:
            self._volatile[item_id] = item
        else:
            self._put(item)
        return item_id

    def _put(self, item: MemoryItem) -> None:
        record = msgpack.packb(
            (item.tier, item.text, list(item.tags), item.meta, item.created, item.expires)
        )
        key = item.id.encode()
        try:
            with self._env.begin(write=True) as txn:
                txn.put(key, record, db=self._items)
                for term in set(item.words()):
                    txn.put(term.encode()[:400], key, db=self._terms, dupdata=True)
                if item.expires is not None:
                    txn.put(_expiry_key(item.expires, key), b"", db=self._expiry)
        except lmdb.Error as exc:
            raise MemoryStoreError(f"cannot remember: {exc}") from exc

    def forget(self, item_id: str) -> bool:
        """Remove an item; False if there was none."""
        for item in self.working:
            if item.id == item_id:
                self.working.remove(item)
                return True
        if self._env is None:
            return self._volatile.pop(item_id, None) is not None
        with self._env.begin(write=True) as txn:
            return self._delete(txn, item_id.encode())

    def _delete(self, txn: Any, key: bytes) -> bool:
        raw = txn.get(key, db=self._items)
        if raw is None:
            return False
        item = _decode(key, raw)
        for term in set(item.words()):
            txn.delete(term.encode()[:400], key, db=self._terms)
        if item.expires is not None:
            txn.delete(_expiry_key(item.expires, key), db=self._expiry)
        txn.delete(key, db=self._items)
        return True

    def expire(self) -> int:
        """Remove the items past their TTL; how many went."""
        now = self._clock()
        if self._env is None:
            gone = [
                k for k, v in self._volatile.items() if v.expires is not None and v.expires <= now
            ]
            for key in gone:
                del self._volatile[key]
            return len(gone)
        removed = 0
        with self._env.begin(write=True) as txn:
            cursor = txn.cursor(db=self._expiry)
            due = []
            for key, _ in cursor:
                if struct.unpack(">d", key[:8])[0] > now:
                    break
                due.append(key)
            for key in due:
                removed += self._delete(txn, key[8:])
                txn.delete(key, db=self._expiry)
        return removed

    # --- reading -------------------------------------------------------------------

    def get(self, item_id: str) -> MemoryItem | None:
        """An item by id (expired ones are not returned)."""
        for item in self.working:
            if item.id == item_id:
                return item
        if self._env is None:
            found = self._volatile.get(item_id)
        else:
            with self._env.begin() as txn:
                raw = txn.get(item_id.encode(), db=self._items)
            found = None if raw is None else _decode(item_id.encode(), raw)
        if found is not None and found.expires is not None and found.expires <= self._clock():
            return None
        return found

    def query(
        self,
        text: str,
        *,
        k: int = 5,
        tiers: Iterable[Tier] = ("working", "short", "long"),
        tags: Sequence[str] = (),
    ) -> list[MemoryItem]:
        """The ``k`` items that best match ``text`` (keywords), best first; items with
        every tag in ``tags`` only. Expired items are never returned."""
        wanted = set(tiers)
        now = self._clock()
        candidates = {item.id: item for item in self._candidates(text) if item.tier in wanted}
        matches = [
            item
            for item in candidates.values()
            if (item.expires is None or item.expires > now) and set(tags) <= set(item.tags)
        ]
        if not matches:
            return []
        stats = self._stats(text, matches)
        for item, score in zip(matches, self.scorer.score(text, matches, stats), strict=True):
            item.score = score
        ranked = sorted(matches, key=lambda i: (i.score, i.created), reverse=True)
        return [item for item in ranked if item.score > 0][:k]

    def _candidates(self, text: str) -> list[MemoryItem]:
        terms = set(terms_of(text))
        found = [i for i in self.working if terms & set(i.words())]
        if self._env is None:
            found += [i for i in self._volatile.values() if terms & set(i.words())]
            return found
        keys: set[bytes] = set()
        with self._env.begin() as txn:
            cursor = txn.cursor(db=self._terms)
            for term in terms:
                if cursor.set_key(term.encode()[:400]):
                    keys.update(cursor.iternext_dup())
            for key in keys:
                raw = txn.get(key, db=self._items)
                if raw is not None:
                    found.append(_decode(key, raw))
        return found

    def _stats(self, text: str, matches: list[MemoryItem]) -> CorpusStats:
        frequency: dict[str, int] = {}
        count = len(self.working) + len(self._volatile)
        if self._env is not None:
            with self._env.begin() as txn:
                count += txn.stat(self._items)["entries"]
                cursor = txn.cursor(db=self._terms)
                for term in set(terms_of(text)):
                    frequency[term] = cursor.count() if cursor.set_key(term.encode()[:400]) else 0
        else:
            for term in set(terms_of(text)):
                frequency[term] = sum(term in terms_of(i.text) for i in self._volatile.values())
        lengths = [len(terms_of(i.text)) for i in matches]
        return CorpusStats(max(count, 1), sum(lengths) / len(lengths), frequency)

    def __len__(self) -> int:
        stored = len(self._volatile)
        if self._env is not None:
            with self._env.begin() as txn:
                stored = txn.stat(self._items)["entries"]
        return len(self.working) + stored

    def close(self) -> None:
        """Close the store (idempotent); later writes raise ``MemoryStoreError``."""
        if self._env is not None:
            self._env.close()
            self._env = None
            self._closed = True


def _expiry_key(expires: float, key: bytes) -> bytes:
    return struct.pack(">d", expires) + key


def _decode(key: bytes, raw: bytes) -> MemoryItem:
    tier, text, tags, meta, created, expires = msgpack.unpackb(raw)
    return MemoryItem(key.decode(), tier, text, tags, meta, created, expires)
