"""The peers a broker knows (those that said HELLO or READY) and the ROUTER that reaches
them: one table, one ``send``, shared by the control plane, the tool router and the
durable plane."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import zmq

from loom.logs import DropCounter
from loom.protocol import HANDLER_BUCKETS, send_frames

__all__ = [
    "MAX_PEERS",
    "PEER_HISTOGRAMS",
    "PEER_STATS",
    "ROLES",
    "Peer",
    "Peers",
    "bounded",
]

MAX_PEERS = 10_000
ROLES = frozenset(("actor", "worker", "client", "link"))
"""A HELLO's role is one of these (anything else counts as ``client``)."""
MAX_PATTERN_BYTES = 8 * 1024
"""Bytes of patterns kept per peer for the directory (the rest are left out)."""


PEER_STATS = {
    "actor": frozenset({"handled", "errors", "unmatched", "dropped", "mailbox"}),
    "worker": frozenset(
        {"calls", "succeeded", "failed", "invalid", "cancelled", "too_large", "running"}
    ),
}
"""The counters each role may push with its heartbeats (anything else is ignored)."""
PEER_HISTOGRAMS = {"actor": {"handler_seconds": HANDLER_BUCKETS}}
"""The histograms each role may push: ``[count per bucket..., +Inf count, sum]``."""


def _count(value: Any) -> bool:
    """A value a peer may report: a finite, non-negative number."""
    return type(value) in (int, float) and math.isfinite(value) and value >= 0


class Peer:
    """A client, actor or worker that introduced itself (HELLO or READY)."""

    __slots__ = (
        "histograms",
        "identity",
        "incarnation",
        "joined",
        "name",
        "patterns",
        "pid",
        "role",
        "seen",
        "since",
        "stats",
        "unique",
    )

    def __init__(self, name: str, role: str, pid: int | None, since: float, seen: float) -> None:
        self.name = name
        self.role = role
        self.pid = pid
        self.since = since
        """Wall-clock seconds when it introduced itself."""
        self.seen = seen
        """Monotonic seconds when it was last heard."""
        self.stats: dict[str, float] = {}
        """The counters it sent with its last heartbeat (for the metrics)."""
        self.histograms: dict[str, tuple[float, ...]] = {}
        """The histograms it sent with its last heartbeat, as sent (checked)."""
        self.patterns: list[str] = []
        self.incarnation = ""
        """This run of the peer (from its HELLO, else its connection's identity)."""
        self.unique = True
        """An actor: no other live incarnation may have its name (unless neither is)."""
        self.joined = False
        """``$sys.<role>.joined`` was published (a worker's waits for its READY)."""
        self.identity = "anonymous"
        """The identity of its connection (its CURVE key's, in the ACL)."""

    def as_dict(self, last_seen: float) -> dict[str, Any]:
        return {
            "name": self.name,
            "identity": self.identity,
            "role": self.role,
            "pid": self.pid,
            "incarnation": self.incarnation,
            "patterns": self.patterns,
            "since": self.since,
            "last_seen": last_seen,
            "stats": self.stats,
            "histograms": {key: list(value) for key, value in self.histograms.items()},
        }


class Peers:
    """The table of peers by identity, and the ROUTER socket that reaches them.

    The socket must have ``ROUTER_MANDATORY`` set, so that a message for a peer that is
    gone or full is counted instead of vanishing.

    Args:
        router: the bound ROUTER socket.
        drops: where failed sends are counted (the control plane's counter).
        clock: monotonic seconds; ``wall``: Unix seconds.
    """

    def __init__(
        self,
        router: zmq.Socket[bytes],
        drops: DropCounter,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.router = router
        self.table: dict[bytes, Peer] = {}
        self.drops = drops
        self._clock = clock
        self._wall = wall

    def send(self, identity: bytes, frames: list[bytes]) -> bool:
        """Send to a peer; count and return False if it is gone or its queue is full."""
        missed = self._send(identity, frames)
        if missed is not None:
            self.drops.drop(*missed, plane="control")
        return missed is None

    def offer(self, identity: bytes, frames: list[bytes]) -> bool:
        """Send to a peer if it can take it now; False (not counted) if not: the caller
        keeps the message and tries again."""
        return self._send(identity, frames) is None

    def _send(self, identity: bytes, frames: list[bytes]) -> tuple[str, str] | None:
        """Send; the drop reason and message when it could not be (None: sent)."""
        try:
            send_frames(self.router, [identity, *frames])
        except zmq.Again:
            return "peer_full", "a peer's queue is full"
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            return "unroutable", "a peer is gone"
        return None

    def get(self, identity: bytes) -> Peer | None:
        return self.table.get(identity)

    def __contains__(self, identity: bytes) -> bool:
        return identity in self.table

    def introduce(self, identity: bytes, name: str, role: str, pid: int | None) -> Peer | None:
        """The peer for ``identity``, made or updated from a HELLO or READY; None when the
        table is full (``MAX_PEERS``)."""
        peer = self.table.get(identity)
        if peer is None:
            if len(self.table) >= MAX_PEERS:
                return None
            peer = Peer(name, role, None, self._wall(), self._clock())
            peer.incarnation = identity.hex()
            self.table[identity] = peer
        peer.name, peer.role, peer.pid = name, role, pid
        return peer

    def pop(self, identity: bytes) -> Peer | None:
        return self.table.pop(identity, None)

    def actor_named(self, name: str, *, unique: bool) -> tuple[bytes, Peer] | None:
        """A live actor called ``name`` that another with that name (``unique`` or not)
        may not join, if there is one (with its identity)."""
        for identity, peer in self.table.items():
            if peer.role == "actor" and peer.name == name and (unique or peer.unique):
                return identity, peer
        return None

    def holds(self, name: str, identity: str) -> bool:
        """Whether a live peer of ``identity`` is called ``name``."""
        return any(p.name == name and p.identity == identity for p in self.table.values())

    def silent(self, limit: float) -> list[bytes]:
        """The identities of the peers not heard for ``limit`` seconds."""
        now = self._clock()
        return [i for i, p in self.table.items() if now - p.seen > limit]

    def name_of(self, identity: bytes) -> str:
        """A peer's name (its identity in hex if it never introduced itself)."""
        peer = self.table.get(identity)
        return peer.name if peer is not None else identity.hex()

    def wall_of(self, monotonic: float) -> float:
        """Unix seconds for a monotonic time."""
        return self._wall() - (self._clock() - monotonic)

    def listed(
        self, extra: Callable[[bytes], dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        """Every peer as plain data (STATS, DIRECTORY), with ``extra(identity)``'s fields."""
        listed = []
        for identity, peer in self.table.items():
            entry = peer.as_dict(self.wall_of(peer.seen))
            if extra is not None:
                entry.update(extra(identity))
            listed.append(entry)
        return listed

    @staticmethod
    def report(peer: Peer, stats: dict[str, Any]) -> None:
        """Keep what a heartbeat reports that ``peer``'s role may report: known counters
        that are finite and non-negative, histograms of the right length."""
        known = PEER_STATS.get(peer.role, frozenset())
        peer.stats = {
            key: value for key, value in list(stats.items())[:64] if key in known and _count(value)
        }
        histograms = PEER_HISTOGRAMS.get(peer.role, {})
        peer.histograms = {
            key: tuple(value)
            for key, bounds in histograms.items()
            if type(value := stats.get(key)) is list
            and len(value) == len(bounds) + 2
            and all(_count(v) for v in value)
        }


def bounded(patterns: list[str]) -> list[str]:
    """The patterns a peer announced, up to ``MAX_PATTERN_BYTES`` of them."""
    kept, size = [], 0
    for pattern in patterns:
        size += len(pattern)
        if size > MAX_PATTERN_BYTES:
            break
        kept.append(pattern)
    return kept
