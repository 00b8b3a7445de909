"""The control plane: one ROUTER socket at the address users configure.

It answers HELLO (version check, announces the pub/sub endpoints, limits and heartbeat),
STATS and DIRECTORY, keeps the table of live peers (heartbeats both ways; a peer silent
for ``liveness`` intervals is dropped), and hands tool calls to the :class:`ToolRouter`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any, ClassVar

import zmq

from loom.broker.durable import DurablePlane
from loom.broker.tools import ToolRouter
from loom.errors import ProtocolError
from loom.logs import DropCounter
from loom.protocol import (
    ANNOUNCE,
    APPROVALS,
    APPROVE,
    BYE,
    CALL,
    CANCEL,
    DACK,
    DIRECTORY,
    DRAIN,
    DSUB,
    ERROR_COMMAND,
    FAIL,
    HANDLER_BUCKETS,
    HEARTBEAT,
    HELLO,
    PROGRESS,
    PUBLISH,
    READY,
    RECENT,
    REPLAY,
    RESET,
    RESULT,
    STATS,
    TRACE,
    VERSION,
    Approve,
    Body,
    Dack,
    Dsub,
    Empty,
    Heartbeat,
    Hello,
    Patterns,
    Ready,
    Recent,
    Replay,
    Trace,
    decode_body,
    encode_control,
    recv_frames,
    request_id,
    send_frames,
)

__all__ = ["ControlPlane", "Peer"]

MAX_PEERS = 10_000
ROLES = frozenset(("actor", "worker", "client"))
"""A HELLO's role is one of these (anything else counts as ``client``)."""
MAX_PATTERN_BYTES = 8 * 1024
"""Bytes of patterns kept per peer for the directory (the rest are left out)."""
MAX_FRAMES = 8
"""Frames of one control-socket message read at most; a longer one is malformed."""
RECENT_LIMIT = 1000
"""The most messages (and calls) one RECENT answer holds."""


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
        "joined",
        "name",
        "patterns",
        "pid",
        "role",
        "seen",
        "since",
        "stats",
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
        self.joined = False
        """``$sys.<role>.joined`` was published (a worker's waits for its READY)."""

    def as_dict(self, last_seen: float) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "pid": self.pid,
            "patterns": self.patterns,
            "since": self.since,
            "last_seen": last_seen,
            "stats": self.stats,
            "histograms": {key: list(value) for key, value in self.histograms.items()},
        }


_Handler = Callable[["ControlPlane", bytes, Any], None]
"""A command's handler: the plane, the peer's identity, the decoded body."""


class ControlPlane:
    """Serves control commands and tool calls on a bound ROUTER socket.

    The socket must have ``ROUTER_MANDATORY`` set, so that a message for a peer that is
    gone or full is counted instead of vanishing.

    Args:
        router: the bound ROUTER socket.
        tools: the tool router.
        durable: the durable topics' plane.
        announce: what HELLO tells clients (endpoints, limits); version and heartbeat
            are added.
        stats: returns the broker's counters for STATS.
        log: a structlog logger.
        events: publishes the broker's ``$sys.*`` events (topic, data).
        heartbeat: seconds between heartbeats.
        liveness: missed heartbeats after which a peer is dead.
        clock: monotonic seconds; ``wall``: Unix seconds.
    """

    def __init__(
        self,
        router: zmq.Socket[bytes],
        *,
        tools: ToolRouter,
        durable: DurablePlane,
        announce: dict[str, Any],
        stats: Callable[[], dict[str, Any]],
        log: Any,
        events: Callable[[str, dict[str, Any]], None] | None = None,
        heartbeat: float = 1.0,
        liveness: int = 3,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._router = router
        self.tools = tools
        self.durable = durable
        self._announce = {
            "version": VERSION,
            **announce,
            "heartbeat": heartbeat,
            "liveness": liveness,
            "max_call_timeout": tools.max_timeout,
        }
        self._stats = stats
        self._log = log
        self._events = events
        self._heartbeat = heartbeat
        self._liveness = liveness
        self._clock = clock
        self._wall = wall
        self.peers: dict[bytes, Peer] = {}
        self.boot = os.urandom(8).hex()
        """This broker's run, in STATS and RECENT: a reader's cursors start again when it
        changes (a restarted broker numbers from 0; its pid may be the same)."""
        self.drops = DropCounter(log)
        self._next_check = clock() + heartbeat
        self._tool_commands: dict[bytes, Callable[[bytes, bytes, bytes], None]] = {
            CALL: tools.on_call,
            CANCEL: tools.on_cancel,
            RESULT: tools.on_result,
            FAIL: tools.on_fail,
            PROGRESS: tools.on_progress,
        }

    def serve(self, budget: int = 1000) -> None:
        """Handle up to ``budget`` waiting messages. Durable events received are batched;
        ``tick`` commits the batch (then forwards and acknowledges it).

        Nothing a peer sends ends the serving: a message that makes a handler fail is
        counted (``error``) and logged, rate-limited, with its traceback."""
        router, peers, tool_commands = self._router, self.peers, self._tool_commands
        now = self._clock()
        for _ in range(budget):
            try:
                frames = recv_frames(router, max_frames=MAX_FRAMES)
            except zmq.Again:
                return
            except ProtocolError as exc:  # too many frames: drained, nothing to answer
                self.drops.drop(exc.reason, str(exc), plane="control")
                continue
            identity, command = frames[0], frames[1] if len(frames) > 1 else b""
            peer = peers.get(identity)
            if peer is not None:
                peer.seen = now
            try:
                if command == PUBLISH:
                    self.durable.on_publish(identity, frames[2:])
                    continue
                handle = tool_commands.get(command)
                if handle is not None and len(frames) > 2:
                    if len(frames) != 4:
                        self.drops.drop("frames", f"{command!r} with {len(frames) - 1} frames")
                    else:
                        handle(identity, frames[2], frames[3])
                    continue
                self._control(identity, frames[1:])
            except Exception as exc:  # a bug a peer's message found: count, log, go on
                what = f"{command[:32]!r}: {type(exc).__name__}: {exc}"
                self.drops.drop("error", what, plane="control", exc_info=exc)

    def _control(self, identity: bytes, frames: list[bytes]) -> None:
        if len(frames) != 2:
            message = f"control message has {len(frames)} frames, expected 2"
            self.drops.drop("frames", message, plane="control")
            self._reply(identity, ERROR_COMMAND, {"code": "MALFORMED", "message": message})
            return
        command, frame = frames
        entry = self._commands.get(command)
        if entry is None:
            message = f"unknown command {command[:32]!r}"
            self.drops.drop("command", message, plane="control")
            error = {"code": "UNKNOWN_COMMAND", "message": message, "rid": request_id(frame)}
            self._reply(identity, ERROR_COMMAND, error)
            return
        handler, kind = entry
        try:
            body = decode_body(frame, kind)
        except ProtocolError as exc:
            self.drops.drop(exc.reason, str(exc), plane="control")
            error = {"code": "MALFORMED", "message": str(exc), "rid": request_id(frame)}
            self._reply(identity, ERROR_COMMAND, error)
            return
        handler(self, identity, body)

    def tick(self) -> float:
        """Expire silent peers, time out calls, commit the durable batch when it is due;
        returns when to call again (monotonic). The broker calls it after every poll."""
        if self.tools.doomed:
            for identity in list(self.tools.doomed):
                self._forget(identity, "unreachable")
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + self._heartbeat / 2
            limit = self._heartbeat * self._liveness
            for identity in [i for i, p in self.peers.items() if now - p.seen > limit]:
                self._forget(identity, "went silent")
        self.durable.flush()
        self.durable.tick(now)
        wake = self._next_check
        for other in (self.tools.tick(), self.durable.due()):
            if other is not None and other < wake:
                wake = other
        return wake

    def send(self, identity: bytes, frames: list[bytes]) -> bool:
        """Send to a peer; count and return False if it is gone or its queue is full."""
        try:
            send_frames(self._router, [identity, *frames])
        except zmq.Again:
            self.drops.drop("peer_full", "a peer's queue is full", plane="control")
            return False
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.drops.drop("unroutable", "a peer is gone", plane="control")
            return False
        return True

    def _reply(self, identity: bytes, command: bytes, body: dict[str, Any]) -> None:
        self.send(identity, encode_control(command, body))

    def _forget(self, identity: bytes, reason: str) -> None:
        peer = self.peers.pop(identity, None)
        if peer is not None:
            if reason != "left":  # one-shot clients (probes, loom list) just go quiet
                level = self._log.debug if peer.role == "client" else self._log.info
                level("peer gone", peer=peer.name, role=peer.role, reason=reason)
            if peer.joined:
                self._publish(f"$sys.{peer.role}.left", peer, reason=reason)
        self.tools.worker_gone(identity, reason)
        self.tools.client_gone(identity)
        self.durable.gone(identity)

    def _introduce(
        self, identity: bytes, name: str, role: str, pid: int | None, rid: int | None
    ) -> Peer | None:
        """The peer for ``identity``, made or updated from a HELLO or READY; None (and an
        error sent) when the table is full."""
        peer = self.peers.get(identity)
        if peer is None:
            if len(self.peers) >= MAX_PEERS:
                message = f"the broker already has {MAX_PEERS} peers"
                self.drops.drop("peers", message, plane="control", peer=name)
                error = {"code": "TOO_MANY_PEERS", "message": message, "rid": rid}
                self._reply(identity, ERROR_COMMAND, error)
                return None
            peer = Peer(name, role, None, self._wall(), self._clock())
            self.peers[identity] = peer
        peer.name, peer.role, peer.pid = name, role, pid
        return peer

    # --- commands ----------------------------------------------------------------

    def _hello(self, identity: bytes, body: Hello) -> None:
        if body.version != VERSION:
            message = f"protocol version {body.version!r} is not supported (broker: {VERSION})"
            self.drops.drop("version", message, plane="control", peer=body.name)
            error = {"code": "VERSION_MISMATCH", "message": message, "version": VERSION}
            self._reply(identity, ERROR_COMMAND, {**error, "rid": body.rid})
            return
        role = body.role if body.role in ROLES else "client"
        peer = self._introduce(identity, body.name, role, body.pid, body.rid)
        if peer is None:
            return
        if not peer.joined and peer.role != "worker":
            self._publish(f"$sys.{peer.role}.joined", peer)
        peer.patterns = _bounded(body.patterns)
        self._log.debug("hello", peer=peer.name, role=peer.role, pid=peer.pid)
        self._reply(identity, HELLO, {**self._announce, "rid": body.rid})

    def _announce_patterns(self, identity: bytes, body: Patterns) -> None:
        peer = self.peers.get(identity)
        if peer is not None:
            peer.patterns = _bounded(body.patterns)

    def _ready(self, identity: bytes, body: Ready) -> None:
        error = self.tools.ready(identity, body)
        if error is not None:
            self.drops.drop("ready", error, plane="control")
            answer = {"code": "INVALID_READY", "message": error, "rid": body.rid}
            self._reply(identity, ERROR_COMMAND, answer)
            return
        peer = self._introduce(identity, body.name, "worker", body.pid, body.rid)
        if peer is not None:
            self._reply(identity, READY, {"rid": body.rid})
            if not peer.joined:
                tools = sorted(self.tools.workers[identity].slots)
                self._publish("$sys.worker.joined", peer, tools=tools)

    def _drain(self, identity: bytes, body: Empty) -> None:
        self.tools.drain(identity)
        self._reply(identity, DRAIN, {"rid": body.rid})

    def _bye(self, identity: bytes, body: Empty) -> None:
        self._forget(identity, "left")

    def _heartbeat_command(self, identity: bytes, body: Heartbeat) -> None:
        peer = self.peers.get(identity)
        stats = body.stats
        if peer is not None and isinstance(stats, dict):
            known = PEER_STATS.get(peer.role, frozenset())
            peer.stats = {
                key: value
                for key, value in list(stats.items())[:64]
                if key in known and _count(value)
            }
            histograms = PEER_HISTOGRAMS.get(peer.role, {})
            peer.histograms = {
                key: tuple(value)
                for key, bounds in histograms.items()
                if type(value := stats.get(key)) is list
                and len(value) == len(bounds) + 2
                and all(_count(v) for v in value)
            }
        self._reply(identity, HEARTBEAT if peer is not None else RESET, {})

    def _stats_command(self, identity: bytes, body: Empty) -> None:
        snap = self._stats()
        snap["control_drops"] = dict(self.drops.counts)
        snap["tool_drops"] = dict(self.tools.drops.counts)
        snap["tool_calls"] = dict(self.tools.counts)
        snap["durable"] = self.durable.snapshot()
        snap["peers"] = [p.as_dict(self._wall_of(p.seen)) for p in self.peers.values()]
        snap["rid"] = body.rid
        snap["pid"] = os.getpid()
        snap["boot"] = self.boot
        self._reply(identity, STATS, snap)

    def _directory(self, identity: bytes, body: Empty) -> None:
        actors: list[dict[str, Any]] = []
        clients: list[dict[str, Any]] = []
        for peer in self.peers.values():
            if peer.role != "worker":
                entry = peer.as_dict(self._wall_of(peer.seen))
                (actors if peer.role == "actor" else clients).append(entry)
        workers = []
        for wid, worker in self.tools.workers.items():
            known = self.peers.get(wid)
            seen = self._wall_of(known.seen) if known is not None else self._wall()
            workers.append(
                {
                    "name": worker.name,
                    "pid": worker.pid,
                    "tools": sorted(worker.slots),
                    "in_flight": len(worker.calls),
                    "draining": worker.draining,
                    "since": known.since if known is not None else seen,
                    "last_seen": seen,
                }
            )
        reply = {
            "actors": actors,
            "clients": clients,
            "workers": workers,
            "tools": self.tools.snapshot(),
            "rid": body.rid,
        }
        self._reply(identity, DIRECTORY, reply)

    def _publish(self, topic: str, peer: Peer, **extra: Any) -> None:
        peer.joined = True
        if self._events is not None:
            self._events(topic, {"name": peer.name, "pid": peer.pid, **extra})

    def _durable_subscribe(self, identity: bytes, body: Dsub) -> None:
        if identity not in self.peers:  # a stream lives as long as its peer: say HELLO
            message = "say HELLO before subscribing: a durable stream is tied to a live peer"
            answer: dict[str, Any] = {"code": "UNKNOWN_PEER", "message": message}
        else:
            answer = self.durable.subscribe(identity, body)
        command = ERROR_COMMAND if "code" in answer else DSUB
        self._reply(identity, command, {**answer, "rid": body.rid})
        if command == DSUB:
            self.durable.start(body.name)

    def _durable_ack(self, identity: bytes, body: Dack) -> None:
        self.durable.ack(identity, body)

    def _replay(self, identity: bytes, body: Replay) -> None:
        answer = self.durable.replay(body)
        command = ERROR_COMMAND if "code" in answer else REPLAY
        self._reply(identity, command, {**answer, "rid": body.rid})

    def _approvals(self, identity: bytes, body: Empty) -> None:
        desk = self.tools.approvals
        pending = desk.pending() if desk is not None else []
        self._reply(identity, APPROVALS, {"pending": pending, "rid": body.rid})

    def _approve(self, identity: bytes, body: Approve) -> None:
        desk = self.tools.approvals
        peer = self.peers.get(identity)
        if peer is None:  # decisions are recorded under the name the broker knows
            error: str | None = "say HELLO before deciding approvals"
        elif desk is None:
            error = "this broker holds no calls for approval"
        else:
            reason = body.reason or ""
            error = desk.decide(body.id, body.approve, peer.name, reason, who=identity)
        if error is not None:
            answer = {"code": "UNKNOWN_APPROVAL", "message": error, "rid": body.rid}
            self._reply(identity, ERROR_COMMAND, answer)
        else:
            self._reply(identity, APPROVE, {"rid": body.rid})

    def _trace(self, identity: bytes, body: Trace) -> None:
        traces = self.tools.traces
        try:
            trace = bytes.fromhex(body.trace)
        except ValueError:
            trace = b""
        if traces is None or not trace:
            message = "TRACE needs a trace id in hex" if traces else "no trace buffer"
            error = {"code": "MALFORMED", "message": message, "rid": body.rid}
            self._reply(identity, ERROR_COMMAND, error)
            return
        try:
            found = traces.find(trace)
        except Exception as exc:  # a record no client should have been able to make
            self._log.exception("cannot read a trace")
            message = f"cannot read the trace: {exc}"
            self._reply(
                identity, ERROR_COMMAND, {"code": "INTERNAL", "message": message, "rid": body.rid}
            )
            return
        self._reply(identity, TRACE, {**found, "rid": body.rid})

    def _recent(self, identity: bytes, body: Recent) -> None:
        traces = self.tools.traces
        if traces is None:
            error = {"code": "MALFORMED", "message": "no buffer", "rid": body.rid}
            self._reply(identity, ERROR_COMMAND, error)
            return
        after = -1 if body.after is None else body.after
        limit = body.limit if body.limit is not None and body.limit > 0 else RECENT_LIMIT
        limit = min(limit, RECENT_LIMIT)
        answer = traces.recent(after, body.calls_after, limit)
        self._reply(identity, RECENT, {**answer, "boot": self.boot, "rid": body.rid})

    def name_of(self, identity: bytes) -> str:
        """A peer's name (its identity in hex if it never introduced itself)."""
        peer = self.peers.get(identity)
        return peer.name if peer is not None else identity.hex()

    def _wall_of(self, monotonic: float) -> float:
        return self._wall() - (self._clock() - monotonic)

    _commands: ClassVar[
        dict[bytes, tuple[Callable[[ControlPlane, bytes, Any], None], type[Body]]]
    ] = {
        HELLO: (_hello, Hello),
        STATS: (_stats_command, Empty),
        DIRECTORY: (_directory, Empty),
        ANNOUNCE: (_announce_patterns, Patterns),
        READY: (_ready, Ready),
        DRAIN: (_drain, Empty),
        BYE: (_bye, Empty),
        HEARTBEAT: (_heartbeat_command, Heartbeat),
        DSUB: (_durable_subscribe, Dsub),
        DACK: (_durable_ack, Dack),
        REPLAY: (_replay, Replay),
        APPROVALS: (_approvals, Empty),
        APPROVE: (_approve, Approve),
        TRACE: (_trace, Trace),
        RECENT: (_recent, Recent),
    }
    """Each command's handler and the type its body is decoded (and checked) as."""


def _bounded(patterns: list[str]) -> list[str]:
    """The patterns a peer announced, up to ``MAX_PATTERN_BYTES`` of them."""
    kept, size = [], 0
    for pattern in patterns:
        size += len(pattern)
        if size > MAX_PATTERN_BYTES:
            break
        kept.append(pattern)
    return kept
