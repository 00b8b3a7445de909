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
from loom.broker._rights import ANONYMOUS, OWNER, Acl, Rights, load_acl
from loom.broker._settings import SecuritySettings
from loom.errors import ConfigError, KeyFileError
from loom.keys import BROKER_KEY, Keypair, key_dir, load_keypair, local_keys, loom_home
from loom.logs import DropCounter
from loom.protocol import ERROR, REPLY, REQUEST, Envelope, encode_header

__all__ = ["AuditLog", "Guard"]

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
        self.written = 0
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
                self.written += 1
                if self._file.tell() >= self._max_bytes:
                    self._rotate()
            except (OSError, ValueError):  # a full disk must not stop the broker
                pass

    def _rotate(self) -> None:
        assert self.path is not None
        self._file.close()
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
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
        self.configure_curve_callback(ZAP_DOMAIN, self)

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self._address = msg[3].decode(errors="replace") if len(msg) > 3 else ""
        await super().handle_zap_message(msg)

    def callback(self, domain: str, key: bytes) -> bool:
        """Called by the authenticator with the client's Z85 public key."""
        identity = self._guard.acl.keys.get(key)
        guard = self._guard
        if identity is None:
            guard.refused += 1
            guard.audit.record(
                "connection refused", "(unknown)", limited=True, key=key.decode(), at=self._address
            )
            return False
        guard.audit.record("connected", identity, limited=True, at=self._address)
        return True

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self._guard.acl.keys.get(zmq.utils.z85.encode(client_public_key), "")


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
        self._log = log
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
        self.holders: dict[str, str] = {}
        """Peer name -> the identity of the live peer that holds it."""
        self.requests: dict[bytes, bytes] = {}
        """Request id -> its topic (the latest ``MAX_REQUESTS``), to check replies."""
        self._events: dict[str, Bucket] = {}
        self._calls: dict[str, Bucket] = {}
        self._authenticator: _Authenticator | None = None

    @staticmethod
    def _ensure_public(directory: Path, broker: Keypair) -> None:
        """Peers of this home find the broker's public key as ``keys/broker.key``: when
        the broker was given another pair, that file must hold its public key."""
        public = directory / f"{BROKER_KEY}.key"
        with contextlib.suppress(KeyFileError):
            if load_keypair(public).public == broker.public:
                return
        if broker.path.parent == directory and broker.name == BROKER_KEY:
            return
        text = (  # zmq.auth's format (it writes a public file only beside a secret one)
            "#   ZeroMQ CURVE Public Certificate (the Loom broker's)\n"
            f'metadata\ncurve\n    public-key = "{broker.public.decode()}"\n'
        )
        public.write_text(text)

    def _load(self) -> Acl:
        path = self.settings.acl
        if self.insecure:
            return Acl(b"")
        if path is None:
            return Acl(self._owner_key)
        return load_acl(path, self._owner_key)

    # --- the authenticator -------------------------------------------------------

    def start(self, context: zmq.Context[Any]) -> None:
        """Start the ZAP authenticator (before any bind)."""
        if self.insecure:
            self._log.warning(
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
            self._log.error("ACL reload failed: the old rights stay", error=str(exc))
            self.audit.record("acl reload failed", OWNER, error=str(exc))
            return False
        self.acl = acl
        self._events.clear()
        self._calls.clear()
        self._log.info("ACL reloaded", acl=self.settings.acl, identities=len(acl.rights))
        self.audit.record(
            "acl reloaded", OWNER, acl=self.settings.acl, identities=sorted(acl.rights)
        )
        return True

    # --- checks --------------------------------------------------------------------

    def rights(self, identity: str) -> Rights:
        """The rights of ``identity`` (none for one the table does not know)."""
        if self.insecure:
            return self.acl.of(OWNER)
        return self.acl.of(identity)

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
        if kind == REQUEST:
            requests = self.requests
            if len(requests) >= MAX_REQUESTS:
                del requests[next(iter(requests))]
            requests[env.id] = topic
        elif (
            kind in (REPLY, ERROR)
            and topic.startswith(b"$inbox.")
            and not topic.startswith(rights.inbox)  # its own: a probe of its link
        ):
            asked = self.requests.get(env.correlation_id or b"")
            if asked is None or not rights.may_reply(asked):
                self.deny("reply", identity, "to that request (not one it may answer)")
                return None
        if rights.rate:
            rate = rights.rate.get("events")
            if rate is not None and not self._bucket(self._events, identity, rate).take():
                self.denied["rate"] = self.denied.get("rate", 0) + 1
                self.drops.drop("rate", f"identity {identity!r} is over {rate:g} events/s")
                return None
        if env.origin is not None:
            self.deny("write", identity, "the origin field (the broker writes it)")
            return None
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
        if len(rights.senders) >= 4096:
            rights.senders.clear()
        rights.senders[sender] = fair
        return fair

    def may_call(self, identity: str, tool: str) -> tuple[str, str] | None:
        """``None`` if ``identity`` may call ``tool`` now, else the tool plane's code
        and message: ``DENIED``, or ``OVERLOADED`` over its call rate."""
        rights = self.rights(identity)
        if not rights.may("call", tool):
            return "DENIED", self.deny("call", identity, repr(tool))
        rate = rights.rate.get("calls")
        if rate is not None and not self._bucket(self._calls, identity, rate).take():
            self.denied["rate"] = self.denied.get("rate", 0) + 1
            message = f"identity {identity!r} is over its {rate:g} calls/s"
            self.drops.drop("rate", message)
            return "OVERLOADED", message
        return None

    @staticmethod
    def _bucket(buckets: dict[str, Bucket], identity: str, rate: float) -> Bucket:
        bucket = buckets.get(identity)
        if bucket is None:
            bucket = buckets[identity] = Bucket(rate, max(rate, 1.0))
        return bucket

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
        for rights in self.acl.rights.values():
            rights.senders.clear()

    def snapshot(self) -> dict[str, Any]:
        """For STATS: the mode, denials by right, refused connections."""
        return {
            "insecure": self.insecure,
            "acl": self.settings.acl,
            "identities": sorted(self.acl.rights),
            "denied": dict(self.denied),
            "refused_connections": self.refused,
            "audit_log": str(self.audit.path) if self.audit.path else None,
        }


def identity_of(guard: Guard | None, user: str) -> str:
    """The identity a message's ``User-Id`` names (``anonymous`` when insecure)."""
    return ANONYMOUS if guard is None or guard.insecure else user
