"""The broker's side of its federation link (``docs/federation.md``).

The link (``loom federate``) is a peer of its own broker that carries events and tool
calls to and from NATS. The broker tells it three things over the control ROUTER: the
local events on exported topics (``FEVENT``, their origin written in), and the
subscription prefixes its local peers hold (``INTEREST``), so the link subscribes in NATS
to what someone here reads and nothing else. The link hands it remote events
(``FEVENT``), which the broker checks as it checks any publish (the origin identity's
right to publish here, the import patterns, the deadline, the size) and delivers to
local subscribers only: a remote event never goes out again (split horizon).

Requests cross like any event; a reply crosses back only to a request that came from
the federation (the broker remembers those), on the requester's inbox, where the
requester's broker checks it as it checks a local reply.

With ``durable = "jetstream"``, durable subscriptions are the link's to serve: a DSUB
goes to it (``FDSUB``), it answers from the JetStream consumer of that name, and hands
the broker each event for the subscriber (``FDELIVER``); the subscriber's DACKs go back
to it (``FDACK``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import msgpack
import msgspec

from loom.broker._rights import LINK
from loom.config import FederationSettings
from loom.errors import ProtocolError
from loom.logs import DropCounter
from loom.protocol import (
    DELIVER,
    DSUB,
    ERROR,
    ERROR_COMMAND,
    FDACK,
    FDELIVER,
    FDGONE,
    FDSUB,
    FEDERATION_QOS,
    FEVENT,
    INTEREST,
    MAX_TOPIC_BYTES,
    REPLY,
    REQUEST,
    Dack,
    Dsub,
    Envelope,
    LinkState,
    Pattern,
    decode_header,
    decode_topic,
    encode_control,
)

if TYPE_CHECKING:
    from loom.broker._security import Guard

__all__ = ["FederationPlane"]

Send = Callable[[bytes, list[bytes]], bool]
MAX_REMOTE_REQUESTS = 100_000
"""Requests from the federation remembered, so that their replies go back."""
MAX_DECISIONS = 10_000
"""Topics whose export decision is remembered (past it, each is decided again)."""
_STANDARD = b"standard"
_RELIABLE = b"reliable"
HELD_BYTES = 64 << 20
"""Bytes of exported events the broker holds while its link's queue is full."""
MAX_DURABLES = 10_000
"""Durable subscriptions served through the link at once."""
DSUB_WINDOW = 1000
"""Deliveries a subscriber may hold unacknowledged (the JetStream consumer's bound)."""


class _Answer(msgspec.Struct, frozen=True):
    """The link's answer to an ``FDSUB``."""

    req: int
    acked: int = 0
    last_seq: int = 0
    code: str | None = None
    message: str = ""


_decode_answer = msgspec.msgpack.Decoder(_Answer).decode


def _crosses(prefix: bytes) -> bool:
    """Whether interest in ``prefix`` is the link's to follow: not the broker's own
    ``$`` topics, but inboxes (a reply from elsewhere comes to one)."""
    return prefix[:1] != b"$" or prefix.startswith(b"$inbox.")


_decode_delivery = msgspec.msgpack.Decoder(tuple[str, int, str]).decode


class FederationPlane:
    """Which events cross the link, the local interest, and the link's state.

    Args:
        settings: ``[federation]``: ``export`` and ``import`` patterns.
        send: sends frames to a peer (the peers' ROUTER).
        offer: the same, False without counting a drop when the peer's queue is full
            (exported events then wait in the broker, up to ``HELD_BYTES``).
        forward: delivers an already checked event to local subscribers.
        subscriptions: the prefixes local peers hold now (the pub/sub proxy's).
        publish: publishes the broker's ``$sys`` events.
        max_payload: the largest payload the broker takes.
        log: a structlog logger.
        guard: identities and rights (``None``: an ``--insecure`` broker).
        clock: wall-clock seconds (deadlines are wall-clock).
    """

    def __init__(
        self,
        settings: FederationSettings,
        *,
        send: Send,
        offer: Send,
        forward: Callable[[bytes, bytes, bytes], None],
        subscriptions: Callable[[], Iterable[bytes]],
        publish: Callable[[str, dict[str, Any]], None],
        max_payload: int,
        log: Any,
        guard: Guard | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.link: bytes | None = None
        """The link's routing id on the ROUTER (``None``: no link attached)."""
        self._send = send
        self._offer = offer
        self._held: deque[tuple[list[bytes], int]] = deque()
        """Exported events waiting for room in the link's queue, in order."""
        self._held_bytes = 0
        self._forward = forward
        self._subscriptions = subscriptions
        self._publish = publish
        self._max_payload = max_payload
        self._guard = guard
        self._clock = clock
        self._log = log
        self._exports = [Pattern(p) for p in settings.export]
        self._imports = [Pattern(p) for p in settings.import_]
        self._decided: dict[bytes, bool] = {}
        self._remote_requests: dict[bytes, bytes] = {}
        """Id of a request from the federation -> the topic its reply goes to."""
        self._added: set[bytes] = set()
        self._removed: set[bytes] = set()
        self.jetstream = settings.durable == "jetstream"
        """Durable subscriptions are served by the link, from JetStream."""
        self._asked: dict[int, tuple[bytes, int | None, str]] = {}
        """FDSUB sent -> (subscriber, its DSUB's rid, name), until the link answers."""
        self._durables: dict[str, tuple[bytes, list[Pattern], str]] = {}
        """Durable subscriptions served through the link -> (subscriber, patterns, its
        identity)."""
        self._req = 0
        self.state: dict[str, Any] = {"state": "detached"}
        self.counts = {"exported": 0, "imported": 0, "export_dropped": 0, "refused": 0}
        self.drops = DropCounter(log)

    # --- local events out ----------------------------------------------------------

    def export(self, topic: bytes, header: bytes, payload: bytes, qos: bytes) -> None:
        """Send a local event to the link if its topic is exported (the caller checked
        that a link is attached); while the link's queue is full, events wait here (up
        to ``HELD_BYTES``, then they are dropped, counted)."""
        if topic[:1] == b"$":  # the broker's own, probes; a reply to a remote request
            if self._remote_requests and topic[:7] == b"$inbox." and self._answers(topic, header):
                self._out([FEVENT, qos, topic, header, payload])
            return
        exported = self._decided.get(topic)
        if exported is None:
            exported = self._decide(topic)
        if exported:
            self._out([FEVENT, qos, topic, header, payload])

    def _out(self, frames: list[bytes]) -> None:
        assert self.link is not None
        if not self._held and self._offer(self.link, frames):
            self.counts["exported"] += 1
            return
        size = len(frames[2]) + len(frames[3]) + len(frames[4])
        if self._held_bytes + size > HELD_BYTES:
            self.counts["export_dropped"] += 1
            self.drops.drop("federation", "the link is behind by 64 MiB", topic=frames[2].decode())
            return
        self._held.append((frames, size))
        self._held_bytes += size

    def retry(self) -> bool:
        """Send the link the events held for it, while its queue has room; whether some
        still wait (the broker then looks again soon)."""
        held = self._held
        while held and self.link is not None:
            frames, size = held[0]
            if not self._offer(self.link, frames):
                return True
            held.popleft()
            self._held_bytes -= size
            self.counts["exported"] += 1
        return bool(held)

    def _answers(self, topic: bytes, header: bytes) -> bool:
        """Whether an event on an inbox is the reply to a request from the federation."""
        try:
            env = decode_header(header)
        except ProtocolError:
            return False
        if env.kind not in (REPLY, ERROR) or env.correlation_id is None:
            return False
        return self._remote_requests.pop(env.correlation_id, None) == topic

    def _decide(self, topic: bytes) -> bool:
        text = topic.decode()
        exported = any(p.matches(text) for p in self._exports)
        if len(self._decided) >= MAX_DECISIONS:
            self._decided.clear()  # a burst of one-off topics: start the cache again
        self._decided[topic] = exported
        return exported

    # --- local interest --------------------------------------------------------------

    def interest(self, prefix: bytes, held: bool) -> None:
        """A subscription prefix local peers now hold, or no longer hold."""
        if not _crosses(prefix):
            return
        if held:
            self._removed.discard(prefix)
            self._added.add(prefix)
        else:
            self._added.discard(prefix)
            self._removed.add(prefix)

    def flush(self) -> None:
        """Tell the link the prefixes that changed since the last flush."""
        if not (self._added or self._removed):
            return
        if self.link is not None:
            body = {"reset": False, "add": sorted(self._added), "remove": sorted(self._removed)}
            self._send(self.link, encode_control(INTEREST, body))
        self._added.clear()
        self._removed.clear()

    # --- the link ---------------------------------------------------------------------

    def attach(self, identity: bytes, who: str) -> bool:
        """A peer said HELLO as the link: take it (it replaces an earlier one) and send
        it the whole interest. False: its identity may not be the link."""
        if self._guard is not None and who != LINK:
            self._guard.deny("link", who or "(unknown)", "as the federation link")
            return False
        if self.link is not None and self.link != identity:
            self._log.warning("a second federation link replaces the first")
        self.link = identity
        self._added.clear()
        self._removed.clear()
        body = {"reset": True, "add": self._interest(), "remove": []}
        self._send(identity, encode_control(INTEREST, body))
        for name, (peer, patterns, owner) in self._durables.items():  # resume them
            self._ask_link(0, name, [p.text for p in patterns], peer, owner)
        self._log.info("federation link attached")
        return True

    def detach(self, identity: bytes) -> None:
        """A peer is gone: if it was the link, nothing goes out any more."""
        if identity != self.link:
            return
        self.link = None
        self.counts["export_dropped"] += len(self._held)
        self._held.clear()
        self._held_bytes = 0
        for peer, rid, name in self._asked.values():  # their answers will not come
            self._durables.pop(name, None)
            self._refuse_dsub(peer, "NO_STORE", "the federation link left", rid)
        self._asked.clear()
        self._log.warning("federation link gone: this broker is local only")
        self._set_state({"state": "detached"})

    def on_state(self, identity: bytes, body: LinkState) -> None:
        """The link says how it stands with NATS."""
        if identity != self.link:
            return
        self._set_state(
            {
                "state": body.state,
                "server": body.server,
                "backlog": body.backlog,
                "dropped": body.dropped,
                "brokers": sorted(body.brokers),
                "link": dict(list(body.counts.items())[:64]),
            }
        )

    def _set_state(self, state: dict[str, Any]) -> None:
        before = self.state.get("state")
        self.state = state
        after = state["state"]
        if after == before:
            return
        if after == "up":
            self._publish("$sys.federation.up", state)
        elif before == "up":
            self._publish("$sys.federation.down", state)

    # --- remote events in ------------------------------------------------------------

    def on_import(self, identity: bytes, frames: list[bytes]) -> None:
        """``[qos, topic, header, payload]`` from the link: checked, then delivered to
        local subscribers (and not exported again). Anything wrong is a counted drop."""
        if identity != self.link:
            self._refuse("not from the link", b"")
            return
        if len(frames) != 4:
            self._refuse(f"FEVENT with {len(frames) + 1} frames", b"")
            return
        qos, topic, header, payload = frames
        read = self._read(topic, header)
        if read is None:
            return
        text, env = read
        problem = None
        if qos not in FEDERATION_QOS:
            problem = "an unknown quality of service"
        elif text.startswith("$inbox."):
            problem = self._unfit_reply(topic, env)
        elif text.startswith("$") or not any(p.matches(text) for p in self._imports):
            problem = "a topic this broker does not import"
        elif len(payload) > self._max_payload:
            problem = f"a payload of {len(payload)} bytes"
        elif env.deadline is not None and env.deadline < self._clock():
            problem = "a deadline passed"
        elif self._guard is not None:
            problem = self._unfit(topic, env.origin)
        if problem is not None:
            self._refuse(problem, topic)
            return
        if env.kind == REQUEST and env.reply_to is not None:
            self._remember_request(env.id, env.reply_to)
        self.counts["imported"] += 1
        self._forward(topic, header, payload)

    def _interest(self) -> list[bytes]:
        """The prefixes local peers hold that the link follows."""
        return sorted(p for p in self._subscriptions() if _crosses(p))

    def _read(self, topic: bytes, header: bytes) -> tuple[str, Envelope] | None:
        """The topic and the header of an event from the link, checked (None, counted:
        not readable)."""
        try:
            return decode_topic(topic), decode_header(header)
        except ProtocolError as exc:
            self._refuse(str(exc), topic[:MAX_TOPIC_BYTES])
            return None

    def _remember_request(self, mid: bytes, reply_to: str) -> None:
        requests = self._remote_requests
        if len(requests) >= MAX_REMOTE_REQUESTS:
            del requests[next(iter(requests))]
        requests[mid] = reply_to.encode()

    def _unfit_reply(self, topic: bytes, env: Envelope) -> str | None:
        """Why a reply from the federation may not go to this inbox (None: it may): it
        must answer a request published here, on its reply topic, by an identity that
        may answer that request's topic here."""
        if env.kind not in (REPLY, ERROR):
            return "an event on an inbox that is not a reply"
        guard = self._guard
        if guard is None:
            return None
        asked = guard.requests.get(env.correlation_id or b"")
        if asked is None or asked[1] != topic:
            return "a reply to no request of this broker's"
        if env.origin is None or not guard.rights(env.origin).may_reply(asked[0]):
            return guard.deny("reply", env.origin or "(none)", "to that request (federated)")
        return None

    def _unfit(self, topic: bytes, origin: str | None) -> str | None:
        """Why the origin identity may not publish ``topic`` here (None: it may)."""
        assert self._guard is not None
        if origin is None:
            return "no origin identity (its broker runs --insecure)"
        if origin in self._guard.banned or not self._guard.rights(origin).may_publish(topic):
            topic_text = topic.decode(errors="replace")
            return self._guard.deny("publish", origin, f"on {topic_text!r} (federated)")
        return None

    def _refuse(self, why: str, topic: bytes) -> None:
        self.counts["refused"] += 1
        self.drops.drop("federation", why, topic=topic.decode(errors="replace"))

    # --- durable subscriptions through JetStream ---------------------------------------

    def durable_subscribe(self, identity: bytes, body: Dsub, who: str) -> None:
        """A DSUB from identity ``who`` (its rights checked): ask the link, which
        answers the subscriber."""
        name = body.name
        held = self._durables.get(name)
        if self.link is None:
            message = "the federation link is not attached: durable subscriptions live in JetStream"
            self._refuse_dsub(identity, "NO_STORE", message, body.rid)
        elif (held is None and len(self._durables) >= MAX_DURABLES) or len(
            self._asked
        ) >= MAX_DURABLES:
            message = f"this broker serves {MAX_DURABLES} durable subscriptions already"
            self._refuse_dsub(identity, "TOO_MANY", message, body.rid)
        else:  # a name held by another peer here moves to this one, as a local stream does
            self._req += 1
            self._asked[self._req] = (identity, body.rid, name)
            self._durables[name] = (identity, [Pattern(p) for p in body.patterns], who)
            self._ask_link(self._req, name, list(body.patterns), identity, who)

    def _ask_link(self, req: int, name: str, patterns: list[str], peer: bytes, owner: str) -> None:
        assert self.link is not None
        body = {"req": req, "name": name, "patterns": patterns, "peer": peer.hex(), "owner": owner}
        self._send(self.link, [FDSUB, msgpack.packb(body)])

    def _refuse_dsub(self, identity: bytes, code: str, message: str, rid: int | None) -> None:
        body = {"code": code, "message": message, "rid": rid}
        self._send(identity, encode_control(ERROR_COMMAND, body))

    def durable_ack(self, identity: bytes, body: Dack) -> bool:
        """A DACK: to the link, if it serves that subscription (False: it does not)."""
        held = self._durables.get(body.name)
        if held is None:
            return False
        if held[0] == identity and self.link is not None:
            self._send(self.link, [FDACK, msgpack.packb({"name": body.name, "seq": body.seq})])
        return True

    def durable_gone(self, identity: bytes) -> None:
        """A peer is gone: the link stops serving its subscriptions."""
        for name in [n for n, (peer, _, _) in self._durables.items() if peer == identity]:
            del self._durables[name]
            if self.link is not None:
                self._send(self.link, [FDGONE, msgpack.packb({"name": name})])

    def on_durable(self, identity: bytes, command: bytes, frames: list[bytes]) -> None:
        """``FDSUB`` answers and ``FDELIVER`` deliveries from the link."""
        if identity != self.link:
            self._refuse(f"{command!r} not from the link", b"")
            return
        try:
            if command == FDSUB and len(frames) == 1:
                self._answered(_decode_answer(frames[0]))
            elif command == FDELIVER and len(frames) == 4:
                self._delivered(*_decode_delivery(frames[0]), frames[1:])
            else:
                self._refuse(f"{command!r} with {len(frames) + 1} frames", b"")
        except (msgspec.DecodeError, ValueError) as exc:
            self._refuse(f"an unreadable {command!r}: {exc}", b"")

    def _delivered(self, peer: str, seq: int, name: str, frames: list[bytes]) -> None:
        """A durable event for a subscriber here: checked as a remote event is (the
        subscription's patterns, the origin's right to publish it here, the size)."""
        held = self._durables.get(name)
        if held is None or held[0].hex() != peer:
            return  # gone, or taken over: JetStream delivers it again to the next one
        topic, header, payload = frames
        read = self._read(topic, header)
        if read is None:
            return
        text, env = read
        problem = None
        if not any(p.matches(text) for p in held[1]):
            problem = "a durable event outside its subscription's patterns"
        elif len(payload) > self._max_payload:
            problem = f"a payload of {len(payload)} bytes"
        elif self._guard is not None:
            problem = self._unfit(topic, env.origin)
        if problem is not None:
            self._refuse(problem, topic)
            return
        self._send(held[0], [DELIVER, msgpack.packb((seq, name)), topic, header, payload])

    def _answered(self, answer: _Answer) -> None:
        asked = self._asked.pop(answer.req, None)
        if asked is None:
            return  # a resumption's answer (req 0), or one for a peer gone since
        identity, rid, name = asked
        if answer.code is not None:
            self._durables.pop(name, None)
            self._refuse_dsub(identity, answer.code[:64], answer.message[:4096], rid)
            return
        body = {"acked": answer.acked, "last_seq": answer.last_seq, "window": DSUB_WINDOW}
        self._send(identity, encode_control(DSUB, {**body, "rid": rid}))

    def snapshot(self) -> dict[str, Any]:
        """For STATS: the link's state, its counters, the interest it was told."""
        return {
            **self.state,
            **self.counts,
            "interest": len(self._interest()),
            "held": len(self._held),
            "durable": "jetstream" if self.jetstream else "local",
            "durable_subscribers": sorted(self._durables)[:100],
        }
