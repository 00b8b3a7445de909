"""The broker's guard: who may connect (CURVE through a ZAP authenticator), who each
connection is (the identity its key is enrolled under), what each identity may do (the
ACL's :class:`Rights`), and the audit log of all of it.

The authenticator runs in a thread of its own (pyzmq's ``ThreadAuthenticator``) and is
started before any socket binds: no connection is ever accepted unauthenticated. It
answers from the current ACL table, which a reload (SIGHUP) swaps whole; connections
stay up, and the rights of the identities behind them change at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from loom.broker._answers import Bucket
from loom.broker._rights import OWNER, Acl, Rights, load_acl, remember
from loom.broker._settings import SecuritySettings
from loom.errors import ConfigError, KeyFileError
from loom.keys import (
    BROKER_KEY,
    Keypair,
    key_dir,
    load_keypair,
    local_keys,
    loom_home,
    write_public,
)
from loom.logs import DropCounter
from loom.protocol import ERROR, REPLY, REQUEST, Envelope, encode_header, monitor_events

__all__ = ["AuditLog", "Guard"]

MAX_REFUSED_SUBSCRIPTIONS = 10_000
"""Refused subscriptions after which an identity is banned: libzmq keeps every prefix a
subscriber asked for until it disconnects, granted or not."""
MAX_REQUESTS = 100_000
"""Requests remembered (id -> topic) so that replies can be checked against them."""
ZAP_DOMAIN = "loom"
"""The ZAP domain of the broker's sockets (the authenticator answers it alone)."""
_NIL = 0xC0
"""msgpack's nil: the last byte of a header whose ``origin`` a peer left empty."""
_FIXARRAY_13, _FIXARRAY_14 = 0x9D, 0x9E
"""The first byte of a header of 13 fields (no ``origin``) and of 14 (with it)."""
_FIXARRAY_14_BYTE = bytes([_FIXARRAY_14])


class AuditLog:
    """Security events as JSON lines: connections, denials, approvals, tool
    registrations, ACL reloads, each with the identity and the time.

    Denials are written at most ``rate`` a second per identity (a peer that keeps
    trying cannot fill the disk); each record says how many were left out before it.
    The file is rotated at ``max_bytes`` (one old file, ``.1``, is kept). Thread-safe:
    the authenticator's thread writes connections.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        max_bytes: int = 64 << 20,
        rate: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._rate = rate
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, Bucket] = {}
        self._left_out: dict[str, int] = {}
        self._file: Any = None
        if path is not None:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._file = self._open()

    def _open(self) -> Any:
        assert self.path is not None
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return os.fdopen(fd, "a", encoding="utf-8")

    def record(self, event: str, identity: str, *, limited: bool = False, **fields: Any) -> None:
        """Append one record; ``limited`` ones (denials, refused connections) are rate
        limited per identity."""
        if self._file is None:
            return
        with self._lock:
            if limited:
                bucket = self._buckets.get(identity)
                if bucket is None:
                    if len(self._buckets) > 10_000:
                        self._buckets.clear()
                    bucket = self._buckets[identity] = Bucket(
                        self._rate, self._rate, clock=self._clock
                    )
                if not bucket.take():
                    self._left_out[identity] = self._left_out.get(identity, 0) + 1
                    return
                skipped = self._left_out.pop(identity, 0)
                if skipped:
                    fields["left_out_before"] = skipped
            line = {"time": round(time.time(), 6), "event": event, "identity": identity, **fields}
            try:
                self._file.write(json.dumps(line, default=str) + "\n")
                self._file.flush()
                if self._file.tell() >= self._max_bytes:
                    self._rotate()
            except (OSError, ValueError):  # a full disk must not stop the broker
                pass

    def _rotate(self) -> None:
        assert self.path is not None
        self._file.close()
        try:
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        finally:  # rotated or not, go on writing (to the same file if need be)
            self._file = self._open()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class _Authenticator(ThreadAuthenticator):
    """ZAP from the guard's current table: a known key passes, under its identity (the
    ``User-Id`` of every message of that connection)."""

    def __init__(self, context: zmq.Context[Any], guard: Guard) -> None:
        super().__init__(context)
        self._guard = guard
        self._address = ""
        self._identity = ""
        self.configure_curve_callback(ZAP_DOMAIN, self)

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        """Answer one ZAP request; nothing may end this thread (no connection would be
        accepted after it): a failure is answered 500 and logged."""
        try:
            self._address = msg[3].decode(errors="replace") if len(msg) > 3 else ""
            self._identity = ""
            await super().handle_zap_message(msg)
        except Exception:
            self._guard.log.exception("the ZAP handler failed: connection refused")
            if len(msg) > 1:
                with contextlib.suppress(Exception):
                    self._send_zap_reply(msg[1], b"500", b"internal error")

    def callback(self, domain: str, key: bytes) -> bool:
        """Called by the authenticator with the client's Z85 public key."""
        guard = self._guard
        identity = guard.acl.keys.get(key)  # read once: a reload may swap the table
        if identity is None or identity in guard.banned:
            guard.refused += 1
            who = "(unknown)" if identity is None else identity
            guard.audit.record(
                "connection refused", who, limited=True, key=key.decode(), at=self._address
            )
            return False
        self._identity = identity
        guard.audit.record("connected", identity, limited=True, at=self._address)
        return True

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self._identity  # what callback() found, for this same request


class Guard:
    """Identities and rights of one broker.

    Args:
        security: the ``[security]`` settings.
        broker_name: the broker's name (no peer may send under it).
        log: a structlog logger.
        home: the Loom home (default: ``$LOOM_HOME`` or the XDG data directory).

    Raises:
        KeyFileError: the broker's or the local key cannot be read or made.
        ConfigError: the ACL file is invalid.
    """

    def __init__(
        self,
        security: SecuritySettings,
        broker_name: str,
        log: Any,
        home: Path | None = None,
    ) -> None:
        self.settings = security
        self.insecure = security.insecure
        self.broker_name = broker_name
        self.log = log
        home = home or loom_home()
        self.home = home
        self.keypair: Keypair | None = None
        owner_key = b""
        if not self.insecure:
            broker, local = local_keys(home)
            if security.key is not None:
                broker = load_keypair(Path(security.key).expanduser())
                if broker.secret is None:
                    raise KeyFileError(f"{security.key}: the broker needs its .key_secret file")
            self.keypair = broker
            owner_key = local.public
            self._ensure_public(key_dir(home), broker)
        self._owner_key = owner_key
        self.acl = self._load()
        audit = security.audit_log
        path = None if audit == "off" else Path(audit or home / "audit.jsonl").expanduser()
        self.audit = AuditLog(path, max_bytes=security.audit_max_bytes)
        self.drops = DropCounter(log)
        self.denied: dict[str, int] = {}
        """Denials by right (``publish``, ``subscribe``, ``call``...)."""
        self.refused = 0
        """Connections whose key is not enrolled."""
        self.failed_handshakes = 0
        """Connections that failed before a key was checked (no CURVE, another key)."""
        self.holders: dict[str, str] = {}
        """Peer name -> the identity of the live peer that holds it."""
        self.requests: dict[bytes, tuple[bytes, bytes, str]] = {}
        """Request id -> its topic, its reply topic and its requester (the latest
        ``MAX_REQUESTS``): a reply must answer one, on its reply topic, from an identity
        that may answer requests on its topic."""
        self._events: dict[str, Bucket] = {}
        self._calls: dict[str, Bucket] = {}
        self._authenticator: _Authenticator | None = None
        self.banned: set[str] = set()
        """Identities that broke the protocol on purpose: refused at the handshake and
        with no rights until the ACL is reloaded."""
        self._refused_subscriptions: dict[str, int] = {}

    @staticmethod
    def _ensure_public(directory: Path, broker: Keypair) -> None:
        """Peers of this home find the broker's public key as ``keys/broker.key``: when
        the broker was given another pair, that file must hold its public key."""
        with contextlib.suppress(KeyFileError):
            if load_keypair(directory / f"{BROKER_KEY}.key").public == broker.public:
                return
        write_public(directory, BROKER_KEY, broker.public)

    def _load(self) -> Acl:
        path = self.settings.acl
        if self.insecure:
            return Acl(b"")
        acl = Acl(self._owner_key) if path is None else load_acl(path, self._owner_key)
        if self.keypair is not None:
            acl.admit_link(self.keypair.public)
        return acl

    # --- the authenticator -------------------------------------------------------

    def start(self, context: zmq.Context[Any]) -> None:
        """Start the ZAP authenticator (before any bind)."""
        if self.insecure:
            self.log.warning(
                "INSECURE: no CURVE, no identities, no rights: anyone who can reach this"
                " broker may publish, read and call anything (started with --insecure)"
            )
            return
        self._authenticator = _Authenticator(context, self)
        self._authenticator.start()

    def secure(self, sock: zmq.Socket[bytes]) -> None:
        """Make ``sock`` a CURVE server with the broker's keys (nothing when insecure)."""
        if self.keypair is None:
            return
        assert self.keypair.secret is not None
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.keypair.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.keypair.secret)
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())

    def stop(self) -> None:
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None
        self.audit.close()

    def reload(self) -> bool:
        """Read the ACL file again (SIGHUP). Peers stay connected; their rights are the
        new ones from now on. A file that does not load leaves the old rights in force.

        Returns:
            Whether the new rights are in force.
        """
        try:
            acl = self._load()
        except (ConfigError, KeyFileError) as exc:
            self.log.error("ACL reload failed: the old rights stay", error=str(exc))
            self.audit.record("acl reload failed", OWNER, error=str(exc))
            return False
        self.acl = acl
        self.banned.clear()
        self._refused_subscriptions.clear()
        self._events.clear()
        self._calls.clear()
        self.log.info("ACL reloaded", acl=self.settings.acl, identities=len(acl.rights))
        self.audit.record(
            "acl reloaded", OWNER, acl=self.settings.acl, identities=sorted(acl.rights)
        )
        return True

    # --- checks --------------------------------------------------------------------

    def rights(self, identity: str) -> Rights:
        """The rights of ``identity`` (none for one the table does not know)."""
        return self.acl.of(identity)

    def handshakes_failed(self, monitor: zmq.Socket[bytes]) -> None:
        """Count and audit what a broker socket's monitor reports: handshakes that
        failed before any key was checked (a peer without CURVE, a wrong broker key).
        Refused keys are the authenticator's to audit."""
        for _, value, endpoint in monitor_events(monitor):
            self.failed_handshakes += 1
            at = endpoint.decode(errors="replace")
            self.audit.record(
                "handshake failed", "(unknown)", limited=True, endpoint=at, error=hex(value)
            )

    def ban(self, identity: str, why: str) -> None:
        """Take every right from ``identity`` and refuse its new connections, until the
        ACL is reloaded (never the owner: that would lock out the broker's own user)."""
        if not identity or identity == OWNER or identity in self.banned:
            return
        self.banned.add(identity)
        self.acl.rights[identity] = self.acl.denied
        self.log.error("identity banned until the ACL is reloaded", identity=identity, why=why)
        self.audit.record("banned", identity, why=why)

    def refused_subscription(self, identity: str) -> None:
        """Count one; past ``MAX_REFUSED_SUBSCRIPTIONS``, ban (libzmq keeps each prefix
        asked until the subscriber disconnects, refused or not)."""
        count = self._refused_subscriptions.get(identity, 0) + 1
        if len(self._refused_subscriptions) < 10_000 or identity in self._refused_subscriptions:
            self._refused_subscriptions[identity] = count
        if count > MAX_REFUSED_SUBSCRIPTIONS:
            self.ban(identity, f"more than {MAX_REFUSED_SUBSCRIPTIONS} refused subscriptions")

    def deny(self, right: str, identity: str, what: str, **context: Any) -> str:
        """Count, log (rate-limited) and audit a denial; returns its message."""
        self.denied[right] = self.denied.get(right, 0) + 1
        message = f"identity {identity!r} may not {right} {what}"
        self.drops.drop(f"denied-{right}", message, **context)
        self.audit.record("denied", identity, limited=True, right=right, what=what)
        return message

    def admit(self, topic: bytes, header: bytes, env: Envelope, identity: str) -> bytes | None:
        """A published message from ``identity``, checked: its header with the origin
        written in, or ``None`` when it is refused (counted, logged and audited here).

        Checked: the right to publish on the topic; the sender name (not the broker's,
        not a name another identity's live peer holds, one it may take); a reply on
        someone's inbox answers a request it may answer; the identity's event rate."""
        rights = self.acl.rights.get(identity) or self.acl.denied
        allowed = rights.published.get(topic)
        if allowed is None:
            allowed = rights.may_publish(topic)
        if not allowed:
            self.deny("publish", identity, f"on {topic.decode(errors='replace')!r}")
            return None
        sender = env.sender
        fair = rights.senders.get(sender)
        if fair is None:
            fair = self._fair_sender(rights, sender)
        if not fair:
            self.deny("send as", identity, repr(sender[:64]))
            return None
        kind = env.kind
        if (
            kind in (REPLY, ERROR)
            and topic.startswith(b"$inbox.")
            and not topic.startswith(rights.inbox)  # its own: a probe of its link
        ):
            asked = self.requests.get(env.correlation_id or b"")
            if asked is None or asked[1] != topic or not rights.may_reply(asked[0]):
                self.deny("reply", identity, "to that request (not one it may answer)")
                return None
        if rights.rate and self._over_rate(self._events, identity, rights, "events"):
            return None
        if env.origin is not None:
            self.deny("write", identity, "the origin field (the broker writes it)")
            return None
        if kind == REQUEST and env.reply_to is not None:
            requests = self.requests
            asked = (topic, env.reply_to.encode(), identity)
            known = requests.get(env.id)
            if known is not None and known != asked:  # a resend is fine; a thief is not
                self.deny("reuse", identity, "another request's id")
                return None
            if known is None and len(requests) >= MAX_REQUESTS:
                del requests[next(iter(requests))]
            requests[env.id] = asked
        first = header[0]
        if first == _FIXARRAY_14 and header[-1] == _NIL:  # origin last, left empty
            return header[:-1] + rights.origin
        if first == _FIXARRAY_13:  # a peer of the revision before origin: append it
            return _FIXARRAY_14_BYTE + header[1:] + rights.origin
        return encode_header(msgspec.structs.replace(env, origin=rights.name))

    def _fair_sender(self, rights: Rights, sender: str) -> bool:
        holder = self.holders.get(sender)
        fair = (
            sender != self.broker_name
            and (holder is None or holder == rights.name)
            and rights.may_take(sender)
        )
        return remember(rights.senders, sender, fair)

    def may_call(self, identity: str, tool: str) -> tuple[str, str] | None:
        """``None`` if ``identity`` may call ``tool`` now, else the tool plane's code
        and message: ``DENIED``, or ``OVERLOADED`` over its call rate."""
        rights = self.rights(identity)
        if not rights.may("call", tool):
            return "DENIED", self.deny("call", identity, repr(tool))
        over = self._over_rate(self._calls, identity, rights, "calls")
        return ("OVERLOADED", over) if over else None

    def _over_rate(
        self, buckets: dict[str, Bucket], identity: str, rights: Rights, kind: str
    ) -> str:
        """Why ``identity`` is over its rate of ``kind`` (``events``, ``calls``) now,
        counted and logged; ``""`` when it is not (or has no such rate)."""
        rate = rights.rate.get(kind)
        if rate is None:
            return ""
        bucket = buckets.get(identity)
        if bucket is None:
            bucket = buckets[identity] = Bucket(rate, max(rate, 1.0))
        if bucket.take():
            return ""
        self.denied["rate"] = self.denied.get("rate", 0) + 1
        message = f"identity {identity!r} is over its {rate:g} {kind}/s"
        self.drops.drop("rate", message)
        return message

    def hold(self, name: str, identity: str) -> None:
        """A live peer of ``identity`` took ``name``."""
        if self.holders.get(name) != identity:
            self.holders[name] = identity
            self._names_changed()

    def release(self, name: str, identity: str, still_held: bool) -> None:
        """A peer of ``identity`` named ``name`` left (``still_held``: another of the
        same identity still has the name)."""
        if not still_held and self.holders.get(name) == identity:
            del self.holders[name]
            self._names_changed()

    def _names_changed(self) -> None:
        for rights in (*self.acl.rights.values(), self.acl.denied):
            rights.senders.clear()

    def snapshot(self) -> dict[str, Any]:
        """For STATS: the mode, denials by right, refused connections."""
        return {
            "insecure": self.insecure,
            "acl": self.settings.acl,
            "identities": sorted(self.acl.rights),
            "denied": dict(self.denied),
            "refused_connections": self.refused,
            "failed_handshakes": self.failed_handshakes,
            "audit_log": str(self.audit.path) if self.audit.path else None,
        }
