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
import os
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any

import msgpack
import zmq
from nats.aio.client import Client as NatsClient
from nats.errors import MaxPayloadError

from loom.config import FederationSettings
from loom.errors import ProtocolError
from loom.federation._durable import DurableBridge
from loom.federation._outbox import Counts, Outbox, Tasks
from loom.federation._subjects import prefix_subjects, topic_subject
from loom.federation._tools import WORKER_NAME, ToolBridge
from loom.keys import BROKER_KEY, key_dir
from loom.logs import DropCounter, get_logger
from loom.protocol import (
    FDACK,
    FDGONE,
    FDSUB,
    FEVENT,
    INTEREST,
    LINK_STATE,
    Pattern,
    decode_header,
)
from loom.session import KeySpec, Session

__all__ = ["Link"]

_packb = msgpack.packb
_unpackb = msgpack.unpackb
EVENTS_NAME = "federation-events"
DEFAULT_BROKER_NAME = "loom-broker"
SEEN_IDS = 262_144
"""Event ids remembered to drop copies (a resend, overlapping subscriptions)."""
RECENT_MAX = 100_000
"""Sent events kept for a resend at most (besides the resend window)."""
MAX_SUBJECTS = 10_000
MAX_RESEND_ASKERS = 1000
"""Brokers whose resend requests are remembered (one served per window each)."""
OUTBOX_MESSAGES = 100_000
OUTBOX_BYTES = 64 << 20
"""What may wait for NATS while it is up but slower than the broker (then: dropped,
counted; while NATS is down, the backlog's own bounds apply)."""
PING_INTERVAL = 1
MAX_PINGS = 2
DETECTION = PING_INTERVAL * (MAX_PINGS + 1)
"""Seconds a silent NATS loss can take to notice: the resend reaches that far back too."""
_STANDARD = b"standard"
_RELIABLE = b"reliable"


class Link:
    """A broker's federation link (run it with ``loom federate``, or let ``loom-broker
    --federate`` start it).

    Args:
        broker: the broker's control endpoint.
        settings: ``[federation]``: NATS servers and credentials, what crosses.
        name: this broker's name across the federation, unique among its brokers
            (default: the name the broker gives in its HELLO answer; the host's name
            when that is the default ``loom-broker``).
        key: the key presented to the broker: its own secret key file (default: the
            Loom home's ``keys/broker.key_secret``), or ``"none"`` for an
            ``--insecure`` broker.
        connect_timeout: seconds to wait for the broker at start.
    """

    def __init__(
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
        self.drops = DropCounter(self.log)
        self.counts = Counts()
        self.outbox = Outbox(OUTBOX_MESSAGES, OUTBOX_BYTES)
        self.tasks = Tasks()
        self.boot = os.urandom(8).hex()
        """This run of the link (a broker restarted under the same name has another)."""
        self.nc: Any = None
        self.up = False
        self.events: Session | None = None
        self._key = key if key is not None else str(key_dir() / f"{BROKER_KEY}.key_secret")
        self._connect_timeout = connect_timeout
        root = settings.subject_prefix
        self._events_root = f"{root}.ev"
        self._resend_subject = f"{root}.fed.resend"
        self._imports = [Pattern(p) for p in settings.import_]
        self._realtime = [Pattern(p) for p in settings.realtime]
        self._context: zmq.Context[Any] | None = None
        self._subjects: dict[bytes, tuple[str, bool]] = {}
        """Topic -> (subject, realtime), for the topics seen lately."""
        self._backlog: deque[tuple[str, bytes]] = deque()
        """Events kept while NATS is unreachable."""
        self._backlog_standard = self._backlog_bytes = self._reliable_bytes = 0
        self._recent: deque[tuple[float, str, bytes]] = deque()
        """(when, subject, body) of the events sent lately: sent again after a failure."""
        self._kept_for = 2 * settings.resend_window + DETECTION
        """Seconds a sent event is kept to be sent again."""
        self._resends: dict[str, float] = {}
        """Broker -> when we last sent it our recent events again (one per window)."""
        self._seen: dict[bytes, None] = {}
        self._interest: set[bytes] = set()
        self._subs: dict[str, Any] = {}
        self._subs_dirty = asyncio.Event()
        self._down_since: float | None = None
        """When NATS was lost (wall-clock): events since a while before go out again."""
        self._server = ""
        self._stopping = False
        self.tools = ToolBridge(self)
        self.durable = DurableBridge(self) if settings.durable == "jetstream" else None

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Join the broker (both sessions), then NATS (in the background: until it is
        reachable, the broker is local only and the link keeps its backlog).

        Raises:
            BrokerUnavailableError: the broker did not answer within ``connect_timeout``.
            RefusedError: the broker refused the link (not its own key).
        """
        self._context = zmq.Context()
        events = self.events = Session(
            self.broker, self._context, name=EVENTS_NAME, role="link", log=self.log, key=self._key
        )
        events.streams[FEVENT] = self._on_local_event
        events.streams[INTEREST] = self._on_interest
        if self.durable is not None:
            events.streams[FDSUB] = self.durable.on_subscribe
            events.streams[FDACK] = self.durable.on_ack
            events.streams[FDGONE] = self.durable.on_gone
        events.restored_hooks.append(self.report)
        if self.durable is not None:  # the broker (re)started: what it logged meanwhile
            events.restored_hooks.append(self._catch_up)
        worker = Session(
            self.broker, self._context, name=WORKER_NAME, role="worker", log=self.log, key=self._key
        )
        self.tools.attach(worker)
        hello = await events.open(self._connect_timeout)
        if not self.name:
            self.name = (
                hello.broker if hello.broker != DEFAULT_BROKER_NAME else socket.gethostname()
            )
        self.log = self.log.bind(broker=self.name)
        await worker.open(self._connect_timeout)
        await self.tools.offer([])
        for work in (
            self._connect(),
            self._flush(),
            self._follow_interest(),
            self.tools.announce(),
        ):
            self.tasks.spawn(work)
        if self.durable is not None:
            self.tasks.spawn(self.durable.store())
            await self._catch_up()
        self.log.info("federation link started", servers=list(self.settings.servers))

    async def stop(self) -> None:
        """Say goodbye on NATS (the others drop this broker's tools at once), close."""
        self._stopping = True
        nc = self.nc
        if nc is not None and nc.is_connected:
            with contextlib.suppress(Exception):
                await nc.publish(self.tools.bye_subject, _packb({"broker": self.name}))
                await asyncio.wait_for(nc.flush(), 1.0)
        await self.tasks.cancel_all()
        if nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 2.0)
        if self.events is not None:
            self.events.close()
        self.tools.close()
        if self._context is not None:
            self._context.term()
            self._context = None
        self.log.info("federation link stopped", **self.stats())

    async def _catch_up(self) -> None:
        assert self.durable is not None
        self.tasks.spawn(self.durable.catch_up())

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
            "outbox": len(self.outbox.items),
        }

    def drop(self, reason: str, message: str) -> None:
        """Count (by reason) and log, rate-limited, something the link did not pass on."""
        self.counts.dropped += 1
        self.drops.drop(reason, message)

    async def report(self) -> None:
        """Tell the broker how the link stands (it publishes ``$sys.federation.*``)."""
        if self.events is None:
            return
        body = {
            "state": "up" if self.up else "down",
            "server": self._server,
            "backlog": len(self._backlog),
            "dropped": self.counts.dropped,
            "brokers": sorted(self.tools.remote),
            "counts": self.stats(),
        }
        self.events.tell(LINK_STATE, body)

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
            "ping_interval": PING_INTERVAL,
            "max_outstanding_pings": MAX_PINGS,
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
            self.nc = nc
            break
        else:
            return
        nc = self.nc
        await nc.subscribe(self._resend_subject, cb=self._on_resend)
        await self.tools.connected(nc)
        if self.durable is not None:
            self.durable.connected(nc)
        self._subs_dirty.set()
        await self._went_up()

    async def _went_up(self) -> None:
        nc = self.nc
        self.up = True
        self._server = str(nc.connected_url.netloc) if nc.connected_url else ""
        self.log.info("federation up", server=self._server)
        backlog, self._backlog = self._backlog, deque()
        self.outbox.put_all((subject, body, "") for subject, body in backlog)  # in order
        for subject, body in backlog:
            self._remember(subject, body)  # a peer back later than us asks for them
        self._backlog_standard = self._backlog_bytes = self._reliable_bytes = 0
        if self.durable is not None:
            self.durable.up()
        await self.report()

    async def _on_disconnected(self) -> None:
        if self._down_since is None:
            self._down_since = time.time()
        if self.up:
            self.up = False
            self._server = ""
            if not self._stopping:
                self.log.warning("federation down: NATS unreachable, this broker is local only")
            await self.report()

    async def _on_reconnected(self) -> None:
        """Back: send again what was sent from shortly before the loss (some may have
        died with the server), and ask the others to do the same for us."""
        since = (self._down_since or time.time()) - self.settings.resend_window - DETECTION
        self._down_since = None
        again = self._lately(since)
        self.outbox.put_first(again)
        self.counts.resent += len(again)
        if self.nc is not None:
            with contextlib.suppress(Exception):
                body = _packb({"broker": self.name, "since": since})
                await self.nc.publish(self._resend_subject, body)
        await self._went_up()

    async def _on_error(self, exc: Exception) -> None:
        self.drops.drop("nats", f"{type(exc).__name__}: {exc}")

    async def _on_closed(self) -> None:
        if not self._stopping:
            self.log.error("the NATS connection closed for good")

    async def _flush(self) -> None:
        """Publish the outbox while NATS is up."""
        outbox = self.outbox
        while True:
            await outbox.wake.wait()
            outbox.wake.clear()
            nc = self.nc
            while outbox.items and self.up and nc is not None:
                message = outbox.take()
                subject, body, reply = message
                try:
                    await nc.publish(subject, body, reply=reply)
                except MaxPayloadError:
                    self._too_large(subject, len(body), reply)
                except Exception:  # the connection went meanwhile: again once it is back
                    outbox.give_back(message)
                    break

    def _too_large(self, subject: str, size: int, reply: str) -> None:
        """NATS refused a message larger than its ``max_payload``: fail the call it
        carries, or the call it answers, or drop the event (counted)."""
        limit = self.nc.max_payload if self.nc is not None else 0
        message = f"{size} bytes through NATS, whose max_payload is {limit}"
        if reply:
            self.tools.too_large(reply, message)
        elif not self.tools.answer_too_large(subject, message):
            self.drop("too_large", f"a message of {message}")

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
        if reliable and self.durable is not None:
            self.durable.keep(topic, header, body)
        if not self.up:
            self._keep(subject, body, reliable, realtime)
        elif not self.outbox.put(subject, body):
            self.drop("outbox", "NATS takes events slower than the broker sends them")
        elif not realtime:
            self._remember(subject, body)

    def _subject_of(self, topic: bytes) -> tuple[str, bool]:
        text = topic.decode()
        known = topic_subject(self._events_root, text), any(p.matches(text) for p in self._realtime)
        if len(self._subjects) >= MAX_SUBJECTS:
            self._subjects.clear()  # a burst of one-off topics: start the cache again
        self._subjects[topic] = known
        return known

    def _remember(self, subject: str, body: bytes) -> None:
        recent = self._recent
        now = time.time()
        recent.append((now, subject, body))
        horizon = now - self._kept_for
        while recent and (recent[0][0] < horizon or len(recent) > RECENT_MAX):
            recent.popleft()

    def _keep(self, subject: str, body: bytes, reliable: bool, realtime: bool) -> None:
        """NATS is unreachable: keep the event within the backlog's bounds, or drop it."""
        settings = self.settings
        if realtime:
            self.drop("realtime", "NATS is unreachable")
            return
        if reliable:
            if self._reliable_bytes + len(body) > settings.reliable_bytes:
                self.drop("backlog", "reliable backlog full while NATS is unreachable")
                return
            self._reliable_bytes += len(body)
        else:
            if (
                self._backlog_standard >= settings.backlog_messages
                or self._backlog_bytes + len(body) > settings.backlog_bytes
            ):
                self.drop("backlog", "backlog full while NATS is unreachable")
                return
            self._backlog_standard += 1
            self._backlog_bytes += len(body)
        self._backlog.append((subject, body))

    async def _on_resend(self, msg: Any) -> None:
        """Another broker is back from a failure: send our recent events again (once a
        window per broker: a request is not proof of anything)."""
        now = time.time()
        try:
            body = _unpackb(msg.data)
            broker, since = body["broker"], body["since"]
            if not (isinstance(broker, str) and isinstance(since, float | int)):
                raise TypeError("broker and since")
        except Exception:
            self.drop("malformed", "an unreadable resend request")
            return
        window = self.settings.resend_window
        last = self._resends.get(broker)
        if last is not None and now - last < window:
            return
        if len(self._resends) >= MAX_RESEND_ASKERS:  # forget those out of their window
            self._resends = {b: t for b, t in self._resends.items() if now - t < window}
            if len(self._resends) >= MAX_RESEND_ASKERS:
                return
        self._resends[broker] = now
        again = self._lately(max(float(since), now - self._kept_for))
        for subject, data, _ in again:
            if not self.outbox.put(subject, data):
                self.drop("outbox", "a resend larger than the queue to NATS")
                break
            self.counts.resent += 1

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
            nc = self.nc
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
                    self.drop("interest", f"more than {MAX_SUBJECTS} subjects")
                    break
                try:
                    self._subs[subject] = await nc.subscribe(subject, cb=self._on_remote_event)
                except Exception as exc:
                    self.drop("nats", f"cannot subscribe to {subject}: {exc}")

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
            self.drop("malformed", f"an unreadable event from NATS: {type(exc).__name__}")
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
        if not text.startswith("$inbox.") and not any(p.matches(text) for p in self._imports):
            return  # (a reply to an inbox here: the broker checks it answers a request)
        assert self.events is not None
        frames = [FEVENT, _RELIABLE if reliable else _STANDARD, topic, header, payload]
        self.counts.imported += 1
        if not self.events.send(frames):
            await self.events.send_waiting(frames)
