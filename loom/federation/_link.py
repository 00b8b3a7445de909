"""The federation link: one broker's bridge to the others, through NATS.

The link is a peer of its own broker, presenting the broker's own key, with two
sessions on the broker's control socket:

* ``federation-events`` (role ``link``): the broker sends it the local events on
  exported topics and the subscription prefixes local peers hold; it hands the broker
  the remote events local peers want.
* ``federation`` (role ``worker``): it serves the tools of other brokers (their calls go
  out as NATS requests), and calls local tools for other brokers (on behalf of the
  remote caller, whose rights apply here).

On NATS (``<prefix>`` is ``subject_prefix``, ``loom`` by default):

* ``<prefix>.ev.<topic>``: events, ``[topic, header, payload, broker, reliable]``.
* ``<prefix>.tool.<tool>``: calls, in the queue group ``loom`` (one broker takes each).
* ``<prefix>.fed.hello``, ``.bye``: each broker's tools, every ``announce_interval``.
* ``<prefix>.fed.cancel.<broker>``, ``<prefix>.fed.resend``: cancellations, and a
  link back from a failure asking the others to send their last events again.
* ``<prefix>.dur.<topic>`` (with ``durable = "jetstream"``): reliable events, into the
  JetStream stream ``LOOM-<prefix>`` (``Nats-Msg-Id`` is the event id: JetStream drops
  copies); each durable subscription is a consumer of it, named after the subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections import deque
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import msgpack
import zmq
from nats.aio.client import Client as NatsClient
from nats.errors import MaxPayloadError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from loom.config import FederationSettings
from loom.errors import LoomError, ProtocolError
from loom.federation._subjects import (
    encode_token,
    pattern_subjects,
    prefix_subjects,
    tool_subject,
    topic_subject,
)
from loom.keys import BROKER_KEY, key_dir
from loom.logs import DropCounter, get_logger
from loom.protocol import (
    CALL,
    CANCEL,
    DIRECTORY,
    FAIL,
    FDACK,
    FDELIVER,
    FDGONE,
    FDSUB,
    FEVENT,
    INTEREST,
    LINK_STATE,
    MAX_CONCURRENCY,
    PROGRESS,
    READY,
    RESULT,
    Empty,
    Pattern,
    decode_call,
    decode_header,
    decode_ref,
    encode_call,
    encode_failure,
    encode_ref,
)
from loom.session import KeySpec, Session

__all__ = ["Link"]

_packb = msgpack.packb
_unpackb = msgpack.unpackb
QUEUE_GROUP = "loom"
WORKER_NAME = "federation"
EVENTS_NAME = "federation-events"
SEEN_IDS = 262_144
"""Event ids remembered to drop copies (a resend, overlapping subscriptions)."""
RECENT_MAX = 100_000
"""Sent events kept for a resend at most (besides the ``resend_window``)."""
MAX_SUBJECTS = 10_000
_STANDARD = b"standard"
_RELIABLE = b"reliable"
_SPEC_FIELDS = ("description", "schema", "returns", "timeout", "idempotent", "annotations")
DURABLE_WINDOW = 1000
"""Deliveries a durable subscriber holds unacknowledged (the consumer's max_ack_pending;
the broker tells the subscriber the same)."""


@dataclass
class _Consumer:
    """A durable subscription served from JetStream: its consumer, its subscriber."""

    name: str
    peer: str
    pending: dict[int, Any] = field(default_factory=dict)
    """Stream sequence -> the message delivered and not yet acknowledged."""
    task: asyncio.Task[None] | None = None


@dataclass
class _Outgoing:
    """A call this broker's client made to a tool of another broker."""

    tool: str
    broker: str | None = None
    """The broker that took it (its ACCEPT), once known."""
    ref: int | None = None
    cancelled: bool = False


@dataclass
class _Remote:
    """What one other broker announced lately."""

    tools: dict[str, dict[str, Any]]
    heard: float
    boot: str = ""


@dataclass
class _Counts:
    exported: int = 0
    imported: int = 0
    duplicates: int = 0
    dropped: int = 0
    resent: int = 0
    calls_out: int = 0
    calls_in: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


class Link:
    """A broker's federation link (run it with ``loom federate``, or let ``loom-broker
    --federate`` start it).

    Args:
        broker: the broker's control endpoint.
        settings: ``[federation]``: NATS servers and credentials, what crosses.
        name: this broker's name across the federation, unique among its brokers
            (default: the name the broker gives in its HELLO answer).
        key: the key presented to the broker: its own secret key file (default: the
            Loom home's ``keys/broker.key_secret``), or ``"none"`` for an
            ``--insecure`` broker.
        connect_timeout: seconds to wait for the broker at start.
    """

    def __init__(  # noqa: PLR0915 - every part of the link's state, named in one place
        self,
        broker: str,
        settings: FederationSettings,
        *,
        name: str | None = None,
        key: KeySpec = None,
        connect_timeout: float = 10.0,
    ) -> None:
        if not settings.servers:
            raise ValueError("the federation needs at least one NATS server")
        self.broker = broker
        self.settings = settings
        self.name = name or ""
        self.log = get_logger("loom.federation")
        self._key = key if key is not None else str(key_dir() / f"{BROKER_KEY}.key_secret")
        self._connect_timeout = connect_timeout
        root = settings.subject_prefix
        self._events_root = f"{root}.ev"
        self._tools_root = f"{root}.tool"
        self._hello_subject = f"{root}.fed.hello"
        self._bye_subject = f"{root}.fed.bye"
        self._resend_subject = f"{root}.fed.resend"
        self._cancel_subject = ""
        self._durable_root = f"{root}.dur"
        self._stream = f"LOOM-{root}"
        self._jetstream = settings.durable == "jetstream"
        self._js: Any = None
        self._stream_ready = asyncio.Event()
        self._js_out: deque[tuple[str, bytes, str]] = deque()
        """(subject, body, message id) of reliable events for the stream, in order."""
        self._js_bytes = 0
        self._js_wake = asyncio.Event()
        self._consumers: dict[str, _Consumer] = {}
        self._imports = [Pattern(p) for p in settings.import_]
        self._realtime = [Pattern(p) for p in settings.realtime]
        self._context: zmq.Context[Any] | None = None
        self._events: Session | None = None
        self._tools: Session | None = None
        self._nc: Any = None
        self._boot = os.urandom(8).hex()
        self._subjects: dict[bytes, tuple[str, bool]] = {}
        """Topic -> (subject, realtime), for the topics seen lately."""
        self._outbox: deque[tuple[str, bytes, str]] = deque()
        """(subject, body, reply) to publish, in order."""
        self._wake = asyncio.Event()
        self._backlog: deque[tuple[str, bytes]] = deque()
        """Events kept while NATS is unreachable."""
        self._backlog_standard = 0
        self._backlog_bytes = 0
        self._reliable_bytes = 0
        self._recent: deque[tuple[float, str, bytes]] = deque()
        """(when, subject, body) of the events sent lately: sent again after a failure."""
        self._seen: dict[bytes, None] = {}
        self._interest: set[bytes] = set()
        self._subs: dict[str, Any] = {}
        self._subs_dirty = asyncio.Event()
        self._served: dict[str, Any] = {}
        """Local tools -> the NATS queue subscription that takes their calls."""
        self._local: dict[str, dict[str, Any]] = {}
        """Local tools (exported) -> their specs, as announced."""
        self._remote: dict[str, _Remote] = {}
        self._offered: list[dict[str, Any]] | None = None
        """The tool specs last READY'd to the broker."""
        self._outgoing: dict[int, _Outgoing] = {}
        self._incoming: dict[int, str] = {}
        """Calls taken for other brokers: our call id -> the reply subject."""
        self._ids = 0
        self._inbox = ""
        self._up = False
        self._down_since: float | None = None
        """When NATS was lost (wall-clock): events since a window before go out again."""
        self._server = ""
        self._tasks: list[asyncio.Task[None]] = []
        self.counts = _Counts()
        self.drops = DropCounter(self.log)
        self._stopping = False

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Join the broker (both sessions), then NATS (in the background: until it is
        reachable, the broker is local only and the link keeps its backlog).

        Raises:
            BrokerUnavailableError: the broker did not answer within ``connect_timeout``.
            RefusedError: the broker refused the link (not its own key).
        """
        self._context = zmq.Context()
        events = self._events = Session(
            self.broker, self._context, name=EVENTS_NAME, role="link", log=self.log, key=self._key
        )
        events.streams[FEVENT] = self._on_local_event
        events.streams[INTEREST] = self._on_interest
        events.streams[FDSUB] = self._on_durable_subscribe
        events.streams[FDACK] = self._on_durable_ack
        events.streams[FDGONE] = self._on_durable_gone
        events.restored_hooks.append(self._report)
        tools = self._tools = Session(
            self.broker, self._context, name=WORKER_NAME, role="worker", log=self.log, key=self._key
        )
        tools.handlers[CALL] = self._on_call_out
        tools.handlers[CANCEL] = self._on_cancel_out
        tools.handlers[RESULT] = self._on_local_result
        tools.handlers[FAIL] = self._on_local_fail
        tools.handlers[PROGRESS] = self._on_local_progress
        tools.restored_hooks.append(self._reannounce)
        tools.lost_hooks.append(self._local_broker_lost)
        hello = await events.open(self._connect_timeout)
        self.name = self.name or hello.broker
        self.log = self.log.bind(broker=self.name)
        root = self.settings.subject_prefix
        self._cancel_subject = f"{root}.fed.cancel.{encode_token(self.name)}"
        await tools.open(self._connect_timeout)
        await self._offer([])
        loop = asyncio.get_running_loop()
        works = [self._connect(), self._flush(), self._follow_interest(), self._announce()]
        if self._jetstream:
            works.append(self._to_stream())
        for work in works:
            self._tasks.append(loop.create_task(work))
        self.log.info("federation link started", servers=list(self.settings.servers))

    async def stop(self) -> None:
        """Say goodbye on NATS (the others drop this broker's tools at once), close."""
        self._stopping = True
        nc = self._nc
        if nc is not None and nc.is_connected:
            with contextlib.suppress(Exception):
                await nc.publish(self._bye_subject, _packb({"broker": self.name}))
                await asyncio.wait_for(nc.flush(), 1.0)
        for consumer in self._consumers.values():
            if consumer.task is not None:
                self._tasks.append(consumer.task)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 2.0)
        for session in (self._events, self._tools):
            if session is not None:
                session.close()
        if self._context is not None:
            self._context.term()
            self._context = None
        self.log.info("federation link stopped", **self.stats())

    def stats(self) -> dict[str, Any]:
        """The link's counters."""
        c = self.counts
        return {
            "exported": c.exported,
            "imported": c.imported,
            "duplicates": c.duplicates,
            "dropped": c.dropped,
            "resent": c.resent,
            "calls_out": c.calls_out,
            "calls_in": c.calls_in,
            "backlog": len(self._backlog),
        }

    # --- NATS ------------------------------------------------------------------------

    async def _connect(self) -> None:
        """Connect to NATS, retrying until it answers; nats-py reconnects after that."""
        settings = self.settings
        options: dict[str, Any] = {
            "servers": list(settings.servers),
            "name": f"loom-{self.name}",
            "no_echo": True,  # our own events and calls never come back to us
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.25,
            "connect_timeout": 2,
            "ping_interval": 2,
            "max_outstanding_pings": 2,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            "error_cb": self._on_error,
            "closed_cb": self._on_closed,
        }
        if settings.credentials:
            options["user_credentials"] = str(Path(settings.credentials).expanduser())
        if settings.nkey:
            options["nkeys_seed"] = str(Path(settings.nkey).expanduser())
        if settings.token:
            options["token"] = settings.token
        delay = 0.25
        while not self._stopping:
            nc = NatsClient()
            try:
                await nc.connect(**options)
            except Exception as exc:
                self.drops.drop("nats", f"cannot reach NATS: {type(exc).__name__}: {exc}")
                with contextlib.suppress(Exception):
                    await nc.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._nc = nc
            break
        else:
            return
        nc = self._nc
        self._inbox = nc.new_inbox()
        await nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)
        await nc.subscribe(self._hello_subject, cb=self._on_hello)
        await nc.subscribe(self._bye_subject, cb=self._on_bye)
        await nc.subscribe(self._resend_subject, cb=self._on_resend)
        await nc.subscribe(self._cancel_subject, cb=self._on_cancel_in)
        self._subs_dirty.set()
        if self._jetstream:
            self._js = nc.jetstream()
            self._tasks.append(asyncio.get_running_loop().create_task(self._make_stream()))
        await self._went_up()

    async def _went_up(self) -> None:
        nc = self._nc
        self._up = True
        self._server = str(nc.connected_url.netloc) if nc.connected_url else ""
        self.log.info("federation up", server=self._server)
        while self._backlog:  # kept while down: out first, in order
            subject, body = self._backlog.popleft()
            self._outbox.append((subject, body, ""))
            self._remember(subject, body)  # a peer back later than us asks for them
        self._backlog_standard = self._backlog_bytes = self._reliable_bytes = 0
        self._wake.set()
        self._js_wake.set()
        await self._report()

    async def _on_disconnected(self) -> None:
        if self._down_since is None:
            self._down_since = time.time()
        if self._up:
            self._up = False
            self._server = ""
            self.log.warning("federation down: NATS unreachable, this broker is local only")
            await self._report()

    async def _on_reconnected(self) -> None:
        """Back: send the last ``resend_window`` of events again (some may have died with
        the server), and ask the others to do the same (we may have missed theirs)."""
        window = self.settings.resend_window
        since = (self._down_since or time.time()) - window
        self._down_since = None
        again = self._lately(since)
        self._outbox.extendleft(reversed(again))  # before anything newer, in order
        self.counts.resent += len(again)
        if self._nc is not None:
            with contextlib.suppress(Exception):
                body = _packb({"broker": self.name, "since": since})
                await self._nc.publish(self._resend_subject, body)
        await self._went_up()

    async def _on_error(self, exc: Exception) -> None:
        self.drops.drop("nats", f"{type(exc).__name__}: {exc}")

    async def _on_closed(self) -> None:
        if not self._stopping:
            self.log.error("the NATS connection closed for good")

    async def _report(self) -> None:
        """Tell the broker how the link stands (it publishes ``$sys.federation.*``)."""
        if self._events is None:
            return
        body = {
            "state": "up" if self._up else "down",
            "server": self._server,
            "backlog": len(self._backlog),
            "dropped": self.counts.dropped,
            "brokers": sorted(self._remote),
            "counts": self.stats(),
        }
        self._events.tell(LINK_STATE, body)

    async def _flush(self) -> None:
        """Publish the outbox while NATS is up."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            nc = self._nc
            outbox = self._outbox
            while outbox and self._up and nc is not None:
                subject, body, reply = outbox.popleft()
                try:
                    await nc.publish(subject, body, reply=reply)
                except MaxPayloadError:
                    await self._too_large(subject, len(body), reply)
                except Exception:  # the connection went meanwhile: again once it is back
                    outbox.appendleft((subject, body, reply))
                    break

    async def _too_large(self, subject: str, size: int, reply: str) -> None:
        """NATS refused a message larger than its ``max_payload``: fail the call it
        carries, or say so to the caller it answers, or drop the event (counted)."""
        limit = self._nc.max_payload if self._nc is not None else 0
        message = f"{size} bytes through NATS, whose max_payload is {limit}"
        if subject.startswith(self._events_root + "."):
            self._drop("too_large", f"an event of {message}")
        elif reply:
            token = int(reply.rpartition(".")[2])
            call = self._outgoing.get(token)
            self._fail_out(token, "TOO_LARGE", f"{call.tool if call else 'a call'}: {message}")
        else:  # an answer to another broker's call
            with contextlib.suppress(Exception):
                fail = encode_failure("TOO_LARGE", f"the answer: {message}")
                await self._nc.publish(subject, _packb(("fail", fail)))

    # --- events out ------------------------------------------------------------------

    def _on_local_event(self, frames: list[bytes]) -> None:
        """``[qos, topic, header, payload]`` from the broker: to NATS, or kept."""
        if len(frames) != 4:
            raise ProtocolError("frames", f"FEVENT with {len(frames) + 1} frames")
        qos, topic, header, payload = frames
        known = self._subjects.get(topic)
        if known is None:
            known = self._subject_of(topic)
        subject, realtime = known
        reliable = qos == _RELIABLE
        body = _packb((topic, header, payload, self.name, reliable))
        self.counts.exported += 1
        if reliable and self._jetstream:
            self._to_keep(topic, header, body)
        if self._up:
            self._outbox.append((subject, body, ""))
            self._wake.set()
            if not realtime:
                self._remember(subject, body)
            return
        self._keep(subject, body, qos == _RELIABLE, realtime)

    def _to_keep(self, topic: bytes, header: bytes, body: bytes) -> None:
        """A reliable event for the JetStream stream (kept while NATS is unreachable,
        up to ``reliable_bytes``)."""
        if self._js_bytes + len(body) > self.settings.reliable_bytes:
            self._drop("backlog", "reliable events for JetStream over reliable_bytes")
            return
        mid = decode_header(header).id.hex()
        subject = topic_subject(self._durable_root, topic.decode())
        self._js_out.append((subject, body, mid))
        self._js_bytes += len(body)
        self._js_wake.set()

    def _subject_of(self, topic: bytes) -> tuple[str, bool]:
        text = topic.decode()
        known = topic_subject(self._events_root, text), any(p.matches(text) for p in self._realtime)
        if len(self._subjects) < MAX_SUBJECTS:
            self._subjects[topic] = known
        return known

    def _remember(self, subject: str, body: bytes) -> None:
        recent = self._recent
        now = time.time()
        recent.append((now, subject, body))
        horizon = now - 2 * self.settings.resend_window
        while recent and (recent[0][0] < horizon or len(recent) > RECENT_MAX):
            recent.popleft()

    def _keep(self, subject: str, body: bytes, reliable: bool, realtime: bool) -> None:
        """NATS is unreachable: keep the event within the backlog's bounds, or drop it."""
        settings = self.settings
        if realtime:
            self._drop("realtime", "NATS is unreachable")
            return
        if reliable:
            if self._reliable_bytes + len(body) > settings.reliable_bytes:
                self._drop("backlog", "reliable backlog full while NATS is unreachable")
                return
            self._reliable_bytes += len(body)
        else:
            if (
                self._backlog_standard >= settings.backlog_messages
                or self._backlog_bytes + len(body) > settings.backlog_bytes
            ):
                self._drop("backlog", "backlog full while NATS is unreachable")
                return
            self._backlog_standard += 1
            self._backlog_bytes += len(body)
        self._backlog.append((subject, body))

    def _drop(self, reason: str, message: str) -> None:
        self.counts.dropped += 1
        self.counts.by_reason[reason] = self.counts.by_reason.get(reason, 0) + 1
        self.drops.drop(reason, message)

    async def _on_resend(self, msg: Any) -> None:
        """Another broker is back from a failure: send it our last events again."""
        since = time.time() - 2 * self.settings.resend_window
        with contextlib.suppress(Exception):
            asked = _unpackb(msg.data)["since"]
            if isinstance(asked, float | int):
                since = max(since, float(asked))
        again = self._lately(since)
        self._outbox.extend(again)
        self.counts.resent += len(again)
        self._wake.set()

    def _lately(self, since: float) -> list[tuple[str, bytes, str]]:
        """The events sent since ``since`` (wall-clock), oldest first."""
        return [(subject, body, "") for when, subject, body in self._recent if when >= since]

    # --- events in -------------------------------------------------------------------

    def _on_interest(self, frames: list[bytes]) -> None:
        """The prefixes local peers subscribe to: follow them in NATS."""
        try:
            body = _unpackb(frames[0])
            reset, add, remove = body["reset"], body["add"], body["remove"]
            if not (isinstance(add, list) and isinstance(remove, list)):
                raise TypeError("add and remove must be lists")
        except Exception as exc:
            raise ProtocolError("body", f"INTEREST: {exc}") from None
        if reset:
            self._interest.clear()
        self._interest.update(p for p in add if isinstance(p, bytes))
        self._interest.difference_update(p for p in remove if isinstance(p, bytes))
        self._subs_dirty.set()

    async def _follow_interest(self) -> None:
        """Keep one NATS subscription per subject the local interest needs."""
        while True:
            await self._subs_dirty.wait()
            self._subs_dirty.clear()
            nc = self._nc
            if nc is None:
                continue
            wanted: set[str] = set()
            for prefix in self._interest:
                wanted.update(prefix_subjects(self._events_root, prefix))
            for subject in [s for s in self._subs if s not in wanted]:
                sub = self._subs.pop(subject)
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            for subject in sorted(wanted - set(self._subs)):
                if len(self._subs) >= MAX_SUBJECTS:
                    self._drop("interest", f"more than {MAX_SUBJECTS} subjects")
                    break
                try:
                    self._subs[subject] = await nc.subscribe(subject, cb=self._on_remote_event)
                except Exception as exc:
                    self._drop("nats", f"cannot subscribe to {subject}: {exc}")
            self.log.debug("interest followed", subjects=sorted(self._subs))

    async def _on_remote_event(self, msg: Any) -> None:
        """An event of another broker: once, to the broker, if it is one we import."""
        try:
            topic, header, payload, broker, reliable = _unpackb(msg.data)
            if not (
                type(topic) is bytes
                and type(header) is bytes
                and type(payload) is bytes
                and type(broker) is str
                and type(reliable) is bool
            ):
                raise TypeError("a field of the wrong type")
            mid = decode_header(header).id
            text = topic.decode()
        except Exception as exc:
            self._drop("malformed", f"an unreadable event from NATS: {type(exc).__name__}")
            return
        if broker == self.name:
            return
        seen = self._seen
        if mid in seen:
            self.counts.duplicates += 1
            return
        seen[mid] = None
        if len(seen) > SEEN_IDS:
            del seen[next(iter(seen))]
        if not any(p.matches(text) for p in self._imports):
            return
        assert self._events is not None
        frames = [FEVENT, _RELIABLE if reliable else _STANDARD, topic, header, payload]
        self.counts.imported += 1
        if not self._events.send(frames):
            await self._events.send_waiting(frames)

    # --- durable subscriptions through JetStream ----------------------------------------

    async def _make_stream(self) -> None:
        """Create the stream (or take it as it is), retrying while JetStream elects its
        leaders (a cluster just started answers "unavailable" for a while)."""
        settings = self.settings
        config = StreamConfig(
            name=self._stream,
            subjects=[f"{self._durable_root}.>"],
            num_replicas=settings.stream_replicas,
            max_age=settings.stream_max_age or None,
            max_bytes=settings.stream_max_bytes,
            storage=StorageType.FILE,
            duplicate_window=120.0,
        )
        delay = 0.2
        while True:
            try:
                await self._js.add_stream(config)
                break
            except BadRequestError:  # there, with another configuration: keep it
                self.log.warning(
                    "the JetStream stream exists as configured before", stream=self._stream
                )
                break
            except Exception as exc:
                self.drops.drop("jetstream", f"cannot make the stream: {type(exc).__name__}: {exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        self._stream_ready.set()
        self._js_wake.set()
        self.log.info("JetStream stream ready", stream=self._stream)

    async def _to_stream(self) -> None:
        """Publish reliable events to the stream, one acknowledged at a time, in order;
        JetStream drops a copy it has already (``Nats-Msg-Id``)."""
        while True:
            await self._js_wake.wait()
            self._js_wake.clear()
            out = self._js_out
            while out and self._up and self._stream_ready.is_set():
                subject, body, mid = out[0]
                try:
                    await self._js.publish(
                        subject, body, stream=self._stream, headers={"Nats-Msg-Id": mid}
                    )
                except MaxPayloadError:
                    self._drop("too_large", f"a reliable event of {len(body)} bytes")
                except Exception as exc:  # no answer in time, or the link went down
                    self.drops.drop("jetstream", f"not stored yet: {type(exc).__name__}: {exc}")
                    await asyncio.sleep(0.2)
                    self._js_wake.set()
                    break
                out.popleft()
                self._js_bytes -= len(body)

    def _on_durable_subscribe(self, frames: list[bytes]) -> None:
        try:
            body = _unpackb(frames[0])
            req, name, patterns, peer = body["req"], body["name"], body["patterns"], body["peer"]
            if not (
                isinstance(req, int)
                and isinstance(name, str)
                and isinstance(peer, str)
                and isinstance(patterns, list)
                and all(isinstance(p, str) for p in patterns)
            ):
                raise TypeError("a field of the wrong type")
        except Exception as exc:
            raise ProtocolError("body", f"FDSUB: {exc}") from None
        work = self._open_consumer(req, name, patterns, peer)
        self._tasks.append(asyncio.get_running_loop().create_task(work))

    async def _open_consumer(self, req: int, name: str, patterns: list[str], peer: str) -> None:
        """The consumer of subscription ``name`` (made if new): answer where it stands,
        then deliver to ``peer`` what it has not acknowledged."""
        durable = "loom-" + hashlib.sha256(name.encode()).hexdigest()[:40]
        try:
            if self._js is None:
                raise ConnectionError("JetStream is not reachable yet")
            await asyncio.wait_for(self._stream_ready.wait(), 10.0)
            filters = sorted({s for p in patterns for s in pattern_subjects(self._durable_root, p)})
            config = ConsumerConfig(
                durable_name=durable,
                description=f"loom durable subscription {name}"[:1024],
                ack_policy=AckPolicy.ALL,
                deliver_policy=DeliverPolicy.ALL,
                max_ack_pending=DURABLE_WINDOW,
                ack_wait=30.0,
                filter_subject=filters[0] if len(filters) == 1 else None,
                filter_subjects=filters if len(filters) > 1 else None,
            )
            try:
                info = await self._js.add_consumer(self._stream, config)
            except BadRequestError:  # there already, with other patterns: as it was made
                info = await self._js.consumer_info(self._stream, durable)
            stream = await self._js.stream_info(self._stream)
            sub = await self._js.pull_subscribe_bind(durable=durable, stream=self._stream)
        except Exception as exc:
            message = f"JetStream: {type(exc).__name__}: {exc}"
            self._answer_durable({"req": req, "code": "NO_STORE", "message": message})
            return
        acked = info.ack_floor.stream_seq if info.ack_floor is not None else 0
        last = stream.state.last_seq
        self._answer_durable({"req": req, "acked": acked, "last_seq": last})
        old = self._consumers.pop(name, None)
        if old is not None and old.task is not None:
            old.task.cancel()
        consumer = self._consumers[name] = _Consumer(name, peer)
        consumer.task = asyncio.get_running_loop().create_task(self._pull(consumer, sub))

    def _answer_durable(self, body: dict[str, Any]) -> None:
        assert self._events is not None
        self._events.send([FDSUB, _packb(body)])

    async def _pull(self, consumer: _Consumer, sub: Any) -> None:
        """Fetch from the consumer, deliver to the subscriber through the broker."""
        assert self._events is not None
        try:
            while True:
                try:
                    messages = await sub.fetch(batch=256, timeout=1.0)
                except NatsTimeout:
                    continue
                except Exception as exc:
                    self.drops.drop("jetstream", f"fetch: {type(exc).__name__}: {exc}")
                    await asyncio.sleep(0.5)
                    continue
                for msg in messages:
                    seq = msg.metadata.sequence.stream
                    try:
                        topic, header, payload, _, _ = _unpackb(msg.data)
                        if not (type(topic) is bytes and type(header) is bytes):
                            raise TypeError("topic and header")
                        if type(payload) is not bytes:
                            raise TypeError("payload")
                    except Exception:  # delivered all the same: the subscriber skips it
                        topic, header, payload = b"$malformed", b"", b""
                    consumer.pending[seq] = msg
                    meta = _packb((consumer.peer, seq, consumer.name))
                    frames = [FDELIVER, meta, topic, header, payload]
                    if not self._events.send(frames):
                        await self._events.send_waiting(frames)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def _on_durable_ack(self, frames: list[bytes]) -> None:
        """The subscriber handled everything up to ``seq``: acknowledge the last of
        those (the consumer acknowledges all before it with it)."""
        try:
            body = _unpackb(frames[0])
            name, seq = body["name"], body["seq"]
        except Exception as exc:
            raise ProtocolError("body", f"FDACK: {exc}") from None
        consumer = self._consumers.get(name)
        if consumer is None or not isinstance(seq, int):
            return
        done = [s for s in consumer.pending if s <= seq]
        if not done:
            return
        last = consumer.pending[max(done)]
        for s in done:
            del consumer.pending[s]
        self._tasks.append(asyncio.get_running_loop().create_task(last.ack()))
        if len(self._tasks) > 1000:
            self._tasks = [t for t in self._tasks if not t.done()]

    def _on_durable_gone(self, frames: list[bytes]) -> None:
        with contextlib.suppress(Exception):
            consumer = self._consumers.pop(_unpackb(frames[0])["name"], None)
            if consumer is not None and consumer.task is not None:
                consumer.task.cancel()

    # --- tools: the catalog ------------------------------------------------------------

    async def _announce(self) -> None:
        """Every interval: read the local tools, serve and announce them; forget brokers
        gone quiet; tell the broker how the link stands."""
        interval = self.settings.announce_interval
        while True:
            try:
                await self._read_local_tools()
                await self._publish_hello()
                self._expire(time.monotonic() - 3 * interval)
                await self._report()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a broker slow to answer: next time
                self.drops.drop("announce", f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(interval)

    async def _read_local_tools(self) -> None:
        assert self._tools is not None
        answer = await self._tools.request(DIRECTORY, {}, timeout=5.0)
        local: dict[str, dict[str, Any]] = {}
        for tool in answer.get("tools", []):
            name = tool.get("name")
            workers = tool.get("workers", [])
            if not isinstance(name, str) or not any(w != WORKER_NAME for w in workers):
                continue
            if not any(fnmatchcase(name, p) for p in self.settings.export_tools):
                continue
            spec = {k: tool[k] for k in _SPEC_FIELDS if tool.get(k) is not None}
            spec["capacity"] = tool.get("capacity", 1)
            local[name] = spec
        self._local = local
        nc = self._nc
        if nc is None:
            return
        for name in [n for n in self._served if n not in local]:
            with contextlib.suppress(Exception):
                await self._served.pop(name).unsubscribe()
        for name in local:
            if name not in self._served:
                subject = tool_subject(self._tools_root, name)
                self._served[name] = await nc.subscribe(
                    subject, queue=QUEUE_GROUP, cb=self._on_call_in
                )

    async def _publish_hello(self) -> None:
        nc = self._nc
        if nc is None or not self._up:
            return
        body = {"broker": self.name, "boot": self._boot, "tools": self._local}
        await nc.publish(self._hello_subject, _packb(body))

    async def _on_hello(self, msg: Any) -> None:
        try:
            body = _unpackb(msg.data)
            broker, tools, boot = body["broker"], body["tools"], body.get("boot", "")
            if not (isinstance(broker, str) and isinstance(tools, dict)):
                raise TypeError("broker and tools")
        except Exception:
            self._drop("malformed", "an unreadable hello from NATS")
            return
        if broker == self.name:
            return
        known = self._remote.get(broker)
        fresh = known is None or known.tools != tools or known.boot != boot
        if known is not None and known.boot != boot:  # it restarted: its calls are gone
            self._fail_calls_at(broker, "restarted")
        self._remote[broker] = _Remote(tools, time.monotonic(), boot)
        if fresh:
            if known is None:
                self.log.info("broker joined the federation", peer=broker)
                await self._report()
            await self._offer_remote()

    async def _on_bye(self, msg: Any) -> None:
        with contextlib.suppress(Exception):
            broker = _unpackb(msg.data)["broker"]
            if isinstance(broker, str) and broker in self._remote:
                await self._forget(broker, "left")

    def _expire(self, horizon: float) -> None:
        for broker in [b for b, r in self._remote.items() if r.heard < horizon]:
            asyncio.get_running_loop().create_task(self._forget(broker, "silent"))

    async def _forget(self, broker: str, why: str) -> None:
        if self._remote.pop(broker, None) is None:
            return
        self.log.warning("broker gone from the federation", peer=broker, reason=why)
        self._fail_calls_at(broker, why)
        await self._offer_remote()
        await self._report()

    async def _offer_remote(self) -> None:
        """READY the tools other brokers serve (those this broker imports)."""
        merged: dict[str, dict[str, Any]] = {}
        for broker, remote in sorted(self._remote.items()):
            for name, spec in remote.tools.items():
                if not isinstance(name, str) or not isinstance(spec, dict):
                    continue
                if not any(fnmatchcase(name, p) for p in self.settings.import_tools):
                    continue
                entry = merged.get(name)
                if entry is None:
                    entry = merged[name] = {
                        "name": name,
                        **{k: spec[k] for k in _SPEC_FIELDS if k in spec},
                        "schema": spec.get("schema") or {},
                        "concurrency": 0,
                        "brokers": [],
                    }
                capacity = spec.get("capacity", 1)
                entry["concurrency"] += capacity if isinstance(capacity, int) else 1
                entry["brokers"].append(broker)
        specs = []
        for entry in merged.values():
            entry["concurrency"] = max(1, min(entry["concurrency"], MAX_CONCURRENCY))
            specs.append(entry)
        await self._offer(specs)

    async def _offer(self, specs: list[dict[str, Any]]) -> None:
        if specs == self._offered:
            return
        assert self._tools is not None
        body = {"name": WORKER_NAME, "pid": os.getpid(), "tools": specs}
        try:
            await self._tools.request(READY, body, Empty, timeout=5.0)
        except LoomError as exc:
            self.drops.drop("ready", f"the broker refused the remote tools: {exc}")
            return
        self._offered = specs
        self.log.info("remote tools offered", tools=sorted(s["name"] for s in specs))

    async def _reannounce(self) -> None:
        """The broker came back (or forgot us): READY again."""
        offered, self._offered = self._offered, None
        await self._offer(offered or [])

    def _local_broker_lost(self) -> None:
        """Our broker went quiet: the calls taken for other brokers cannot end here."""
        for ref in list(self._incoming):
            self._answer_in(ref, "fail", encode_failure("WORKER_LOST", "the serving broker left"))

    # --- tools: calls from here to other brokers ----------------------------------------

    def _on_call_out(self, meta: bytes, args: bytes) -> None:
        """The broker gives the link a call to a remote tool: request it on NATS."""
        token, tool, timeout, trace, _, caller = decode_call(meta)
        if not self._up or self._nc is None:
            self._fail_out(token, "WORKER_LOST", f"{tool}: the federation is down")
            return
        self.counts.calls_out += 1
        self._outgoing[token] = _Outgoing(tool)
        body = _packb(
            {
                "tool": tool,
                "args": args,
                "timeout": timeout,
                "trace": trace,
                "caller": caller,
                "broker": self.name,
            }
        )
        self._outbox.append((tool_subject(self._tools_root, tool), body, f"{self._inbox}.{token}"))
        self._wake.set()

    def _on_cancel_out(self, meta: bytes, _: bytes) -> None:
        token = decode_ref(meta)
        call = self._outgoing.get(token)
        if call is None:
            return
        call.cancelled = True
        if call.broker is None:  # not taken yet: its ACCEPT will be answered by a cancel
            return
        self._cancel_remote(call)

    def _cancel_remote(self, call: _Outgoing) -> None:
        assert call.broker is not None and call.ref is not None
        subject = f"{self.settings.subject_prefix}.fed.cancel.{encode_token(call.broker)}"
        self._outbox.append((subject, _packb({"ref": call.ref}), ""))
        self._wake.set()

    async def _on_reply(self, msg: Any) -> None:
        """An answer from the broker serving one of our calls."""
        try:
            token = int(msg.subject.rpartition(".")[2])
        except ValueError:
            return
        call = self._outgoing.get(token)
        if call is None:
            return
        headers = msg.headers or {}
        if headers.get("Status") == "503":  # no responders: nobody serves it now
            self._fail_out(token, "UNKNOWN_TOOL", f"{call.tool}: no broker serves it now")
            return
        try:
            kind, *rest = _unpackb(msg.data)
            if kind == "accept":
                broker, ref = rest
                if not (isinstance(broker, str) and isinstance(ref, int)):
                    raise TypeError("accept")
                call.broker, call.ref = broker, ref
                if call.cancelled:
                    self._cancel_remote(call)
                return
            (body,) = rest
            if type(body) is not bytes:
                raise TypeError("body")
        except Exception:
            self._fail_out(token, "MALFORMED", f"{call.tool}: an unreadable answer")
            return
        assert self._tools is not None
        if kind == "progress":
            self._tools.send(encode_ref(PROGRESS, token, body))
        elif kind in ("result", "fail"):
            self._outgoing.pop(token, None)
            frames = encode_ref(RESULT if kind == "result" else FAIL, token, body)
            if not self._tools.send(frames):
                await self._tools.send_waiting(frames)

    def _fail_out(self, token: int, code: str, message: str) -> None:
        self._outgoing.pop(token, None)
        if self._tools is not None:
            self._tools.send(encode_ref(FAIL, token, encode_failure(code, message)))

    def _fail_calls_at(self, broker: str, why: str) -> None:
        for token, call in list(self._outgoing.items()):
            if call.broker == broker:
                self._fail_out(token, "WORKER_LOST", f"{call.tool}: broker {broker} {why}")

    # --- tools: calls from other brokers to here -----------------------------------------

    async def _on_call_in(self, msg: Any) -> None:
        """Another broker's call to one of our tools: ACCEPT, then call it here for the
        remote caller (the broker checks that identity's rights)."""
        try:
            body = _unpackb(msg.data)
            tool, args, timeout, trace, caller = (
                body["tool"],
                body["args"],
                body["timeout"],
                body["trace"],
                body["caller"],
            )
            if not (
                isinstance(tool, str)
                and type(args) is bytes
                and (timeout is None or isinstance(timeout, float | int))
                and (trace is None or type(trace) is bytes)
                and (caller is None or isinstance(caller, str))
                and msg.reply
            ):
                raise TypeError("a field of the wrong type")
        except Exception:
            self._drop("malformed", "an unreadable call from NATS")
            return
        self._ids += 1
        ref = self._ids
        self._incoming[ref] = msg.reply
        self.counts.calls_in += 1
        nc = self._nc
        assert nc is not None and self._tools is not None
        await nc.publish(msg.reply, _packb(("accept", self.name, ref)))
        timeout = float(timeout) if timeout else None
        frames = encode_call(ref, tool, timeout, trace, args, caller=caller)
        if not self._tools.send(frames):
            await self._tools.send_waiting(frames)

    async def _on_cancel_in(self, msg: Any) -> None:
        with contextlib.suppress(Exception):
            ref = _unpackb(msg.data)["ref"]
            if isinstance(ref, int) and ref in self._incoming and self._tools is not None:
                self._tools.send(encode_ref(CANCEL, ref))

    def _on_local_result(self, meta: bytes, body: bytes) -> None:
        self._answer_in(decode_ref(meta), "result", body)

    def _on_local_fail(self, meta: bytes, body: bytes) -> None:
        self._answer_in(decode_ref(meta), "fail", body)

    def _on_local_progress(self, meta: bytes, body: bytes) -> None:
        ref = decode_ref(meta)
        reply = self._incoming.get(ref)
        if reply is not None:
            self._outbox.append((reply, _packb(("progress", body)), ""))
            self._wake.set()

    def _answer_in(self, ref: int, kind: str, body: bytes) -> None:
        reply = self._incoming.pop(ref, None)
        if reply is not None:
            self._outbox.append((reply, _packb((kind, body)), ""))
            self._wake.set()
