"""The control plane: the ROUTER socket at the address users configure.

It answers HELLO (version check, announces the pub/sub endpoints, limits and heartbeat),
STATS and DIRECTORY, expires peers silent for ``liveness`` heartbeats, and hands tool
calls to the :class:`ToolRouter` and durable commands to the :class:`DurablePlane`.
Every body is decoded against its command's type first (``loom.protocol._bodies``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import zmq

from loom.broker._answers import Bucket, Cached, fit
from loom.broker._durable import DurablePlane
from loom.broker._federation import FederationPlane
from loom.broker._groups import Groups
from loom.broker._peers import ROLES, Peer, Peers, bounded
from loom.broker._rights import ANONYMOUS, LINK, OWNER
from loom.broker._settings import BrokerSettings
from loom.broker._tools import ToolRouter
from loom.errors import PatternError, ProtocolError
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
    FDELIVER,
    FDSUB,
    FEDERATION_WORKER,
    FEVENT,
    HEARTBEAT,
    HELLO,
    LINK_STATE,
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
    LinkState,
    Pattern,
    Patterns,
    Ready,
    Recent,
    Replay,
    Trace,
    decode_body,
    decode_header,
    decode_topic,
    encode_control,
    header_id,
    max_frame,
    recv_frames,
    recv_frames_signed,
    request_id,
)

if TYPE_CHECKING:
    from loom.broker._security import Guard

__all__ = ["ControlPlane"]

MAX_FRAMES = 8
"""Frames of one control-socket message read at most; a longer one is malformed."""
RECENT_LIMIT = 1000
"""The most messages (and calls) one RECENT answer holds."""

_Handler = Callable[["ControlPlane", bytes, Any], None]
"""A command's handler: the plane, the peer's identity, the decoded body."""


class ControlPlane:
    """Serves control commands, durable commands and tool calls on the peers' ROUTER.

    Args:
        peers: the peer table and the ROUTER socket.
        settings: the broker's settings (heartbeat, liveness).
        tools: the tool router.
        durable: the durable topics' plane.
        announce: what HELLO tells clients (endpoints, limits); version, heartbeat,
            liveness and the longest call timeout are added.
        stats: returns the pub/sub counters for STATS.
        publish: publishes the broker's ``$sys.*`` events (topic, data).
        log: a structlog logger.
        guard: identities and rights (``None``: the broker runs insecure, every peer
            is ``anonymous`` and may do anything).
        federation: the federation link's plane (a peer whose HELLO says ``link``).
        clock: monotonic seconds.
    """

    def __init__(
        self,
        peers: Peers,
        settings: BrokerSettings,
        *,
        tools: ToolRouter,
        durable: DurablePlane,
        groups: Groups | None = None,
        announce: dict[str, Any],
        stats: Callable[[], dict[str, Any]],
        publish: Callable[[str, dict[str, Any]], None],
        log: Any,
        guard: Guard | None = None,
        federation: FederationPlane,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.peers = peers
        self.federation = federation
        self.guard = guard
        self.who = ANONYMOUS
        """The identity of the message being served."""
        self.owners: dict[str, str] = {}
        """Durable subscription name -> the identity that created it (this run)."""
        self.tools = tools
        self.durable = durable
        self.groups = groups if groups is not None else Groups()
        self._next_prune = 0.0
        """Queue groups (the pub/sub proxy delivers through them)."""
        self._announce = {
            "version": VERSION,
            **announce,
            "heartbeat": settings.heartbeat,
            "liveness": settings.liveness,
            "max_call_timeout": settings.max_call_timeout,
        }
        self._stats = stats
        self._publish_event = publish
        self._log = log
        self._heartbeat = settings.heartbeat
        self._liveness = settings.liveness
        self._clock = clock
        self.boot = os.urandom(8).hex()
        """This broker's run, in STATS and RECENT: a reader's cursors start again when it
        changes (a restarted broker numbers from 0; its pid may be the same)."""
        self.drops = peers.drops
        self._frame_limit = max_frame(settings.max_payload) - 4096  # room for the framing
        self._stats_answer = Cached(self._build_stats, clock=clock)
        self._directory_answer = Cached(self._build_directory, clock=clock)
        self._scans = Bucket(rate=20.0, burst=20.0, clock=clock)
        """TRACE and REPLAY scan the broker's buffers or its log: 20 a second, all peers."""
        self._next_check = clock() + settings.heartbeat
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
        router, table, tool_commands = self.peers.router, self.peers.table, self._tool_commands
        guard = self.guard
        now = self._clock()
        for _ in range(budget):
            try:
                if guard is None:
                    frames = recv_frames(router, max_frames=MAX_FRAMES)
                else:
                    frames, self.who = recv_frames_signed(router, max_frames=MAX_FRAMES)
            except zmq.Again:
                return
            except ProtocolError as exc:  # too many frames: drained, nothing to answer
                self.drops.drop(exc.reason, str(exc), plane="control")
                continue
            identity, command = frames[0], frames[1] if len(frames) > 1 else b""
            peer = table.get(identity)
            if peer is not None:
                peer.seen = now
            try:
                if command == PUBLISH:
                    if guard is None or self._admit_durable(guard, identity, frames):
                        self.durable.on_publish(identity, frames[2:])
                    continue
                if command == FEVENT:
                    self.federation.on_import(identity, frames[2:])
                    continue
                if command in (FDSUB, FDELIVER):
                    self.federation.on_durable(identity, command, frames[2:])
                    continue
                handle = tool_commands.get(command)
                if handle is not None and len(frames) > 2:
                    if len(frames) != 4:
                        self.drops.drop("frames", f"{command!r} with {len(frames) - 1} frames")
                    elif command == CALL:
                        self.tools.on_call(identity, frames[2], frames[3], self.who)
                    else:
                        handle(identity, frames[2], frames[3])
                    continue
                self._control(identity, frames[1:])
            except Exception as exc:  # a bug a peer's message found: count, log, go on
                what = f"{command[:32]!r}: {type(exc).__name__}: {exc}"
                self.drops.drop("error", what, plane="control", exc_info=exc)

    def _admit_durable(self, guard: Guard, identity: bytes, frames: list[bytes]) -> bool:
        """A durable PUBLISH, checked like any publish (its origin written in); False
        when refused (acknowledged ``DENIED``) or unreadable (the durable plane says)."""
        if len(frames) != 5:
            return True  # the durable plane counts and answers it
        try:
            decode_topic(frames[2])
            env = decode_header(frames[3])
        except ProtocolError:
            return True
        signed = guard.admit(frames[2], frames[3], env, self.who)
        if signed is None:
            self.durable.refuse(identity, header_id(frames[3]) or env.id, "DENIED")
            return False
        frames[3] = signed
        return True

    def _denied(self, right: str, what: str, identity: bytes, rid: int | None) -> bool:
        """Refuse with ``DENIED`` (counted, logged, audited); False, the answer of the
        ``_may_*`` check that calls it."""
        assert self.guard is not None
        message = self.guard.deny(right, self.who, what)
        self._refuse(identity, "DENIED", message, rid)
        return False

    def _may_read(self, what: str, identity: bytes, rid: int | None) -> bool:
        guard = self.guard
        if guard is None or guard.rights(self.who).may_read(what):
            return True
        return self._denied("read", what, identity, rid)

    def _control(self, identity: bytes, frames: list[bytes]) -> None:
        if len(frames) != 2:
            message = f"control message has {len(frames)} frames, expected 2"
            self.drops.drop("frames", message, plane="control")
            self._refuse(identity, "MALFORMED", message, None)
            return
        command, frame = frames
        entry = self._commands.get(command)
        if entry is None:
            message = f"unknown command {command[:32]!r}"
            self.drops.drop("command", message, plane="control")
            self._refuse(identity, "UNKNOWN_COMMAND", message, request_id(frame))
            return
        handler, kind = entry
        try:
            body = decode_body(frame, kind)
        except ProtocolError as exc:
            self.drops.drop(exc.reason, str(exc), plane="control")
            self._refuse(identity, "MALFORMED", str(exc), request_id(frame))
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
            for identity in self.peers.silent(self._heartbeat * self._liveness):
                self._forget(identity, "went silent")
        self.durable.flush()
        self.durable.tick(now)
        if self.groups.sent and now >= self._next_prune:
            self._next_prune = now + 1.0
            self.groups.prune(time.time())  # requests past their deadline: nobody waits
        wake = self._next_check
        if self.federation.retry():  # the link's queue was full: look again soon
            wake = now + 0.001
        for other in (self.tools.tick(), self.durable.due()):
            if other is not None and other < wake:
                wake = other
        return wake

    def revoke(self) -> int:
        """After the rights changed: forget the workers whose identity may no longer
        serve one of their tools (their calls end ``WORKER_LOST`` or are retried
        elsewhere; a worker that READYs again is refused). Returns how many."""
        if self.guard is None:
            return 0
        gone = []
        for identity, worker in self.tools.workers.items():
            peer = self.peers.get(identity)
            rights = self.guard.rights(peer.identity if peer is not None else "")
            if not all(rights.may("serve", tool) for tool in worker.slots):
                gone.append(identity)
        for identity in gone:
            self._forget(identity, "its identity may no longer serve its tools")
        return len(gone)

    def _reply(self, identity: bytes, command: bytes, body: dict[str, Any]) -> None:
        self.peers.send(identity, encode_control(command, body))

    def _refuse(self, identity: bytes, code: str, message: str, rid: int | None) -> None:
        """Answer ``ERROR`` with ``code`` (the peer's library raises its RefusedError)."""
        self._reply(identity, ERROR_COMMAND, {"code": code, "message": message, "rid": rid})

    def _forget(self, identity: bytes, reason: str) -> None:
        peer = self.peers.pop(identity)
        if peer is not None and self.guard is not None:
            still = self.peers.holds(peer.name, peer.identity)
            self.guard.release(peer.name, peer.identity, still)
        if peer is not None:
            if reason != "left":  # one-shot clients (probes, loom list) just go quiet
                level = self._log.debug if peer.role == "client" else self._log.info
                level("peer gone", peer=peer.name, role=peer.role, reason=reason)
            if peer.joined:
                self._publish(f"$sys.{peer.role}.left", peer, reason=reason)
        self.federation.detach(identity)
        self.federation.durable_gone(identity)
        self.tools.worker_gone(identity, reason)
        self.tools.client_gone(identity)
        self.durable.gone(identity)
        self.groups.leave(identity)  # its requests in flight: to another member, or failed

    def _introduce(
        self,
        identity: bytes,
        name: str,
        role: str,
        pid: int | None,
        rid: int | None,
        *,
        unique: bool = True,
    ) -> Peer | None:
        """The peer for ``identity``, made or updated from a HELLO or READY, speaking as
        ``name`` from now on (see ``_claim``); None (and an error sent) when the table
        is full."""
        known = self.peers.get(identity)
        previous = known.name if known is not None else None
        peer = self.peers.introduce(identity, name, role, pid)
        if peer is None:
            message = f"the broker already has {len(self.peers.table)} peers"
            self.drops.drop("peers", message, plane="control", peer=name)
            self._refuse(identity, "TOO_MANY_PEERS", message, rid)
            return None
        peer.unique = unique
        self._claim(peer, previous)
        return peer

    def _publish(self, topic: str, peer: Peer, **extra: Any) -> None:
        peer.joined = True
        data = {"name": peer.name, "pid": peer.pid, "incarnation": peer.incarnation}
        self._publish_event(topic, {**data, **extra})

    # --- commands ----------------------------------------------------------------

    def _hello(self, identity: bytes, body: Hello) -> None:
        if body.version != VERSION:
            message = f"protocol version {body.version!r} is not supported (broker: {VERSION})"
            self.drops.drop("version", message, plane="control", peer=body.name)
            error = {"code": "VERSION_MISMATCH", "message": message, "version": VERSION}
            self._reply(identity, ERROR_COMMAND, {**error, "rid": body.rid})
            return
        role = body.role if body.role in ROLES else "client"
        if self.guard is not None:
            exclusive = role != "client" and body.unique
            if not self._may_join(identity, body.name, exclusive, body.rid):
                return
            if self._refused_patterns(identity, body.patterns, body.rid):
                return
        if role == "actor" and not self._unique(identity, body):
            return
        if role == "link" and not self.federation.attach(identity, self.who):
            self._refuse(identity, "DENIED", "only the broker's own key may be its link", body.rid)
            return
        peer = self._introduce(identity, body.name, role, body.pid, body.rid, unique=body.unique)
        if peer is None:
            return
        if body.incarnation:
            peer.incarnation = body.incarnation
        if not peer.joined and peer.role != "worker":
            self._publish(f"$sys.{peer.role}.joined", peer)
        peer.patterns = bounded(body.patterns)
        self._log.debug("hello", peer=peer.name, role=peer.role, pid=peer.pid, who=self.who)
        self._reply(identity, HELLO, {**self._announce, "identity": self.who, "rid": body.rid})

    def _may_join(self, identity: bytes, name: str, exclusive: bool, rid: int | None) -> bool:
        """The name is one this identity may take, and (for an ``exclusive`` one: a
        unique actor's, a worker's) no live peer of another identity holds it; the
        owner may take any."""
        assert self.guard is not None
        who = self.who
        rights = self.guard.rights(who)
        if not rights.may_take(name):
            return self._denied("take the name", repr(name[:64]), identity, rid)
        holder = self.guard.holders.get(name)
        peer = self.peers.get(identity)
        renaming = peer is not None and peer.name == name
        held = holder is not None and holder != who and not renaming
        if held and exclusive and not rights.owner:
            what = f"{name[:64]!r} (another identity's peer has it)"
            return self._denied("take the name", what, identity, rid)
        return True

    def _refused_patterns(self, identity: bytes, patterns: list[str], rid: int | None) -> bool:
        """Refuse a HELLO (or ANNOUNCE) whose patterns subscribe where its identity may
        not read (the XPUB would refuse the subscriptions: say so at once instead)."""
        assert self.guard is not None
        rights = self.guard.rights(self.who)
        refused = []
        for text in patterns[:1000]:
            try:
                prefix = Pattern(text).prefix
            except PatternError:
                continue  # not a pattern the peer can subscribe with either
            if not rights.may_subscribe(prefix):
                refused.append(text)
        if not refused:
            return False
        what = "to " + ", ".join(repr(p[:80]) for p in refused[:5])
        if rid is None:
            self.guard.deny("subscribe", self.who, what)
        else:
            self._denied("subscribe", what, identity, rid)
        return True

    def _unique(self, identity: bytes, body: Hello) -> bool:
        """An actor's name belongs to one live incarnation: a second is refused
        (``DUPLICATE_NAME``; a restarted actor waits for its old run to be forgotten).
        The same incarnation on a new connection replaces its old one."""
        found = self.peers.actor_named(body.name, unique=body.unique)
        if found is None or found[0] == identity:
            return True
        old_identity, old = found
        if body.incarnation and old.incarnation == body.incarnation:
            self.peers.pop(old_identity)  # reconnected: it is the same actor
            self.tools.client_gone(old_identity)
            self.durable.gone(old_identity)
            return True
        message = (
            f"an actor named {body.name!r} is live (pid {old.pid}, incarnation "
            f"{old.incarnation}): names are unique; pick another, or stop that one"
        )
        self.drops.drop("duplicate", message, plane="control")
        self._refuse(identity, "DUPLICATE_NAME", message, body.rid)
        return False

    def _claim(self, peer: Peer, previous: str | None) -> None:
        """``peer`` now speaks as its name: a unique actor's or a worker's name is its
        identity's while it lives (clients' and shared names are not held: ``loom
        call``, ``loom tap`` and the dashboard of every identity share theirs)."""
        peer.identity = self.who
        guard = self.guard
        if guard is None:
            return
        if previous is not None and previous != peer.name:  # renamed: the old is free
            guard.release(previous, self.who, self.peers.holds(previous, self.who))
        if peer.role != "client" and peer.unique:
            guard.hold(peer.name, self.who)

    def _announce_patterns(self, identity: bytes, body: Patterns) -> None:
        """An actor's patterns now, and its queue-group bindings; answered when it asks
        (``rid``): DENIED when its identity may not read where they subscribe."""
        grouped = [pattern for _, pattern, _ in body.groups]
        if self.guard is not None and self._refused_patterns(
            identity, [*body.patterns, *grouped], body.rid
        ):
            return
        if self.guard is not None and grouped:  # a member takes requests from the others
            rights = self.guard.rights(self.who)
            refused = [p for p in grouped if not rights.may_reply(p.encode())]
            if refused:
                self._denied("reply", f"in a queue group on {refused[0]!r}", identity, body.rid)
                return
        peer = self.peers.get(identity)
        if peer is not None:
            peer.patterns = bounded(body.patterns)
            if body.groups and body.member is None:
                message = "queue-group bindings need a member id"
                self._refuse(identity, "INVALID_GROUPS", message, body.rid)
                return
            if body.member is not None:
                error = self.groups.join(identity, peer.name, self.who, body.member, body.groups)
                if error is not None:
                    self.drops.drop("groups", error, plane="control", peer=peer.name)
                    self._refuse(identity, "INVALID_GROUPS", error, body.rid)
                    return
        if body.rid is not None:
            self._reply(identity, ANNOUNCE, {"rid": body.rid})

    def _ready(self, identity: bytes, body: Ready) -> None:
        guard = self.guard
        if guard is not None:
            if not self._may_join(identity, body.name, True, body.rid):
                return
            rights = guard.rights(self.who)
            refused = [t.name for t in body.tools if not rights.may("serve", t.name)]
            if refused:
                self._denied("serve", ", ".join(map(repr, refused[:10])), identity, body.rid)
                return
        remote = any(t.brokers for t in body.tools)
        if guard is not None and self.who != LINK and (remote or body.name == FEDERATION_WORKER):
            what = "tools of other brokers, or as its federation link's worker"
            self._denied("serve", what, identity, body.rid)
            return
        error = self.tools.ready(identity, body)
        if error is not None:
            self.drops.drop("ready", error, plane="control")
            self._refuse(identity, "INVALID_READY", error, body.rid)
            return
        peer = self._introduce(identity, body.name, "worker", body.pid, body.rid)
        if peer is not None:
            if guard is not None:
                tools = [t.name for t in body.tools]
                guard.audit.record("tools served", self.who, worker=peer.name, tools=tools)
            self._reply(identity, READY, {"rid": body.rid})
            if not peer.joined:
                tools = sorted(self.tools.workers[identity].slots)
                self._publish("$sys.worker.joined", peer, tools=tools)

    def _link_state(self, identity: bytes, body: LinkState) -> None:
        self.federation.on_state(identity, body)

    def _drain(self, identity: bytes, body: Empty) -> None:
        self.tools.drain(identity)
        self._reply(identity, DRAIN, {"rid": body.rid})

    def _bye(self, identity: bytes, body: Empty) -> None:
        self._forget(identity, "left")

    def _heartbeat_command(self, identity: bytes, body: Heartbeat) -> None:
        peer = self.peers.get(identity)
        if peer is not None and body.stats is not None:
            self.peers.report(peer, body.stats)
        self._reply(identity, HEARTBEAT if peer is not None else RESET, {})

    def _stats_command(self, identity: bytes, body: Empty) -> None:
        if not self._may_read("stats", identity, body.rid):
            return
        self._reply(identity, STATS, {**self._stats_answer.get(), "rid": body.rid})

    def _build_stats(self) -> dict[str, Any]:
        """STATS, within one frame: the busiest topics, and as many peers, subscriptions
        and durable subscribers as fit (``*_omitted`` say how many did not)."""
        limit = self._frame_limit
        snap = self._stats()
        busiest = sorted(snap["topics"].items(), key=lambda item: -item[1]["published"])
        topics, snap["topics_omitted"] = fit(busiest, limit * 4 // 10)
        snap["topics"] = dict(topics)
        snap["subscriptions"], snap["subscriptions_omitted"] = fit(
            snap["subscriptions"], limit // 10
        )
        snap["peers"], snap["peers_omitted"] = fit(self.peers.listed(), limit * 2 // 10)
        durable = self.durable.snapshot()
        subscribers = durable.get("subscribers", {})
        kept, durable["subscribers_omitted"] = fit(subscribers.items(), limit // 10)
        durable["subscribers"] = dict(kept)
        snap["durable"] = durable
        snap["control_drops"] = dict(self.drops.counts)
        snap["tool_drops"] = dict(self.tools.drops.counts)
        snap["tool_calls"] = dict(self.tools.counts)
        snap["pid"] = os.getpid()
        snap["boot"] = self.boot
        snap["security"] = self.guard.snapshot() if self.guard else {"insecure": True}
        snap["groups"] = self.groups.snapshot()
        snap["federation"] = self.federation.snapshot()
        return snap

    def _directory(self, identity: bytes, body: Empty) -> None:
        if not self._may_read("directory", identity, body.rid):
            return
        answer = self._directory_answer.get()
        rights = self.guard.rights(self.who) if self.guard is not None else None
        if rights is not None and not rights.owner:  # the tools it may call, no others
            tools = [tool for tool in answer["tools"] if rights.may("call", tool["name"])]
            workers = [
                {**worker, "tools": [t for t in worker["tools"] if rights.may("call", t)]}
                for worker in answer["workers"]
            ]
            answer = {**answer, "tools": tools, "workers": workers}
        self._reply(identity, DIRECTORY, {**answer, "rid": body.rid})

    def _build_directory(self) -> dict[str, Any]:
        """DIRECTORY, within one frame: tools first (their schemas are what agents read),
        then workers and peers; ``truncated`` says something did not fit."""
        limit = self._frame_limit
        tools, tools_left = fit(self.tools.snapshot(), limit * 6 // 10)
        workers, workers_left = fit(self.tools.workers_snapshot(self.peers), limit // 10)
        durable = self.durable.patterns_of
        listed = [
            p
            for p in self.peers.listed(lambda identity: {"durable": durable(identity)})
            if p["role"] != "worker"
        ]
        peers, peers_left = fit(listed, limit * 2 // 10)
        return {
            "actors": [p for p in peers if p["role"] == "actor"],
            "clients": [p for p in peers if p["role"] != "actor"],
            "workers": workers,
            "tools": tools,
            "truncated": bool(tools_left or workers_left or peers_left),
            "insecure": self.guard is None,
        }

    def _durable_subscribe(self, identity: bytes, body: Dsub) -> None:
        if identity not in self.peers:  # a stream lives as long as its peer: say HELLO
            message = "say HELLO before subscribing: a durable stream is tied to a live peer"
            self._refuse(identity, "UNKNOWN_PEER", message, body.rid)
            return
        guard = self.guard
        if guard is not None:
            if not self._may_own(identity, body.name, body.rid):
                return
            if self._refused_patterns(identity, body.patterns, body.rid):
                return  # a durable stream reads what a subscription would
        if self.federation.jetstream:  # served by the link, which answers
            if guard is not None and body.name not in self.owners and len(self.owners) < 100_000:
                self.owners[body.name] = self.who
            self.federation.durable_subscribe(identity, body, self.who)
            return
        answer = self.durable.subscribe(identity, body)
        if "code" in answer:
            self._refuse(identity, answer["code"], answer["message"], body.rid)
            return
        if guard is not None and body.name not in self.owners and len(self.owners) < 100_000:
            self.owners[body.name] = self.who  # once it exists: the name is its creator's
        self._reply(identity, DSUB, {**answer, "rid": body.rid})
        self.durable.start(body.name)  # after the answer: it must not queue behind a window

    def _durable_ack(self, identity: bytes, body: Dack) -> None:
        if not self.federation.durable_ack(identity, body):
            self.durable.ack(identity, body)

    def _may_own(self, identity: bytes, name: str, rid: int | None) -> bool:
        """A durable subscription name belongs to the identity that created it (this
        run of the broker), and to one whose ``durable`` rights cover it."""
        assert self.guard is not None
        who = self.who
        owner = self.owners.get(name)
        if owner is not None and owner != who:
            what = f"{name!r} (it is {owner}'s)"
            return self._denied("use the durable name", what, identity, rid)
        if not self.guard.rights(who).may_own(name):
            return self._denied("own the durable name", repr(name), identity, rid)
        return True

    def _replay(self, identity: bytes, body: Replay) -> None:
        if self.guard is not None:
            if not self.guard.rights(self.who).replay:
                self._denied("replay", "the durable log", identity, body.rid)
                return
            if self._refused_patterns(identity, [body.pattern], body.rid):
                return  # the log holds what a subscription there would read
        if self._busy(identity, body.rid):
            return
        answer = self.durable.replay(body, budget=self._frame_limit // 2)
        if "code" in answer:
            self._refuse(identity, answer["code"], answer["message"], body.rid)
            return
        self._reply(identity, REPLAY, {**answer, "rid": body.rid})

    def _approvals(self, identity: bytes, body: Empty) -> None:
        listed = self.tools.approvals.pending()
        if self.guard is not None:
            rights = self.guard.rights(self.who)
            if not rights.may_approve_any():
                self._denied("approve", "any tool's calls", identity, body.rid)
                return
            listed = [p for p in listed if rights.may("approve", p["tool"])]
        pending, left = fit(listed, self._frame_limit)
        answer = {"pending": pending, "omitted": left, "rid": body.rid}
        self._reply(identity, APPROVALS, answer)

    def _approve(self, identity: bytes, body: Approve) -> None:
        peer = self.peers.get(identity)
        if peer is None:  # decisions are recorded under the name the broker knows
            error: str | None = "say HELLO before deciding approvals"
        else:
            desk = self.tools.approvals
            reason = (body.reason or "")[:1000]
            by = peer.name
            if self.guard is not None:
                tool = desk.tool_of(body.id)
                if tool is not None and not self.guard.rights(self.who).may("approve", tool):
                    self._denied("approve", f"calls of {tool!r}", identity, body.rid)
                    return
                if self.who != OWNER:  # another identity's approver says whose it is
                    by = f"{peer.name}@{self.who}"
                self.guard.audit.record(
                    "approval", self.who, id=body.id, tool=tool, approve=body.approve, by=by
                )
            error = desk.decide(body.id, body.approve, by, reason, who=identity)
        if error is not None:
            self._refuse(identity, "UNKNOWN_APPROVAL", error, body.rid)
        else:
            self._reply(identity, APPROVE, {"rid": body.rid})

    def _busy(self, identity: bytes, rid: int | None) -> bool:
        """Refuse a scan past the rate (``BUSY``): True when refused."""
        if self._scans.take():
            return False
        self._refuse(identity, "BUSY", "the broker serves 20 scans a second: ask again", rid)
        return True

    def _trace(self, identity: bytes, body: Trace) -> None:
        if not self._may_read("traces", identity, body.rid) or self._busy(identity, body.rid):
            return
        traces = self.tools.traces
        try:
            trace = bytes.fromhex(body.trace)
        except ValueError:
            trace = b""
        if not trace and body.thread is None:
            message = "TRACE needs a trace id in hex, or a thread"
            self._refuse(identity, "MALFORMED", message, body.rid)
            return
        try:
            if body.thread is not None:
                found = traces.find_thread(body.thread, budget=self._frame_limit)
            else:
                found = traces.find(trace, budget=self._frame_limit)
        except Exception as exc:  # a record no client should have been able to make
            self._log.exception("cannot read a trace")
            self._refuse(identity, "INTERNAL", f"cannot read the trace: {exc}", body.rid)
            return
        self._reply(identity, TRACE, {**found, "rid": body.rid})

    def _recent(self, identity: bytes, body: Recent) -> None:
        if not self._may_read("traces", identity, body.rid):
            return
        after = -1 if body.after is None else body.after
        limit = body.limit if body.limit is not None and body.limit > 0 else RECENT_LIMIT
        answer = self.tools.traces.recent(
            after, body.calls_after, min(limit, RECENT_LIMIT), budget=self._frame_limit
        )
        self._reply(identity, RECENT, {**answer, "boot": self.boot, "rid": body.rid})

    _commands: ClassVar[dict[bytes, tuple[_Handler, type[Body]]]] = {
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
        LINK_STATE: (_link_state, LinkState),
    }
    """Each command's handler and the type its body is decoded (and checked) as."""
