"""The broker's ROUTER: control commands and tool calls, frames <-> objects.

Every message a peer's DEALER sends or receives starts with a ``command`` frame, an ASCII
word. Two layouts follow it:

* control commands: ``[command, body]``, ``body`` a msgpack map (``rid`` echoed);
* tool calls (``CALL``, ``CANCEL``, ``RESULT``, ``FAIL``, ``PROGRESS``):
  ``[command, meta, body]``, ``meta`` a small msgpack array whose first item is the call's
  id, ``body`` msgpack (arguments, result, failure map, progress data) or empty.

``docs/protocol.md`` is the normative description; keep the two in step.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, NamedTuple

import msgpack
import msgspec
import zmq
from zmq.utils.monitor import parse_monitor_message

from loom.errors import ProtocolError
from loom.protocol._envelope import (
    MAX_ID_BYTES,
    MAX_NAME_CHARS,
    encode_payload,
    raw_send,
    user_id,
)

__all__ = [
    "ANNOUNCE",
    "APPROVALS",
    "APPROVE",
    "BYE",
    "CALL",
    "CANCEL",
    "CONTROL_COMMANDS",
    "DACK",
    "DEFAULT_MAX_TIMEOUT",
    "DELIVER",
    "DIRECTORY",
    "DRAIN",
    "DSUB",
    "ERROR_CODES",
    "ERROR_COMMAND",
    "FAIL",
    "FDACK",
    "FDELIVER",
    "FDGONE",
    "FDSUB",
    "FEDERATION_QOS",
    "FEDERATION_WORKER",
    "FEVENT",
    "HANDLER_BUCKETS",
    "HEARTBEAT",
    "HELLO",
    "INTEREST",
    "LINK_STATE",
    "PROGRESS",
    "PUBACK",
    "PUBLISH",
    "READY",
    "RECENT",
    "REPLAY",
    "RESET",
    "RESULT",
    "STATS",
    "TOOL_COMMANDS",
    "TRACE",
    "CallMeta",
    "decode_acks",
    "decode_call",
    "decode_control",
    "decode_delivery",
    "decode_failure",
    "decode_ref",
    "decode_value",
    "encode_call",
    "encode_control",
    "encode_failure",
    "encode_ref",
    "encode_value",
    "monitor_events",
    "recv_frames",
    "recv_frames_signed",
    "send_frames",
]

# --- control commands: [command, msgpack map] --------------------------------------

HELLO = b"HELLO"
STATS = b"STATS"
ERROR_COMMAND = b"ERROR"
DIRECTORY = b"DIRECTORY"
ANNOUNCE = b"ANNOUNCE"
"""actor -> broker: the patterns it subscribes to (for the directory)."""
READY = b"READY"
"""worker -> broker: the tools it serves; broker -> worker: accepted."""
DRAIN = b"DRAIN"
"""worker -> broker: send me no more calls; broker -> worker: none will come."""
BYE = b"BYE"
"""peer -> broker: leaving now. A worker's unfinished calls are dispatched again
(idempotent) or answered WORKER_LOST; a client's are cancelled."""
HEARTBEAT = b"HEARTBEAT"
"""peer -> broker each interval, ``{stats}`` (its counters); the broker answers each one."""
HANDLER_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
"""Upper bounds (seconds) of an actor's handler-latency histogram, which its heartbeat
stats carry as ``handler_seconds: [count per bucket..., +Inf count, sum]``."""
RESET = b"RESET"
"""broker -> peer: I do not know you (restarted, or declared you dead): introduce yourself."""

DSUB = b"DSUB"
"""actor -> broker ``{name, patterns}``: stream me durable events from my last ack."""
DACK = b"DACK"
"""actor -> broker ``{name, seq}``: handled everything up to ``seq`` (cumulative)."""
REPLAY = b"REPLAY"
"""client -> broker ``{pattern, since, since_time, limit}``: past durable events."""
APPROVALS = b"APPROVALS"
"""client -> broker ``{}`` -> ``{pending: [...]}``: the tool calls waiting for approval."""
APPROVE = b"APPROVE"
"""client -> broker ``{id, approve, by, reason}``: decide one (ERROR UNKNOWN_APPROVAL)."""
TRACE = b"TRACE"
"""client -> broker ``{trace}`` (hex) -> ``{trace, messages, calls}``: one trace's record."""
RECENT = b"RECENT"
"""client -> broker ``{after, calls_after, limit}`` -> ``{messages, calls, ...}``: what passed
through the broker since the caller's last look (for the dashboard)."""

LINK_STATE = b"LINK"
"""link -> broker ``{state, server, backlog, dropped}``: the link's state, for ``$sys``
events and STATS (no answer)."""

CONTROL_COMMANDS = frozenset(
    (
        HELLO,
        STATS,
        ERROR_COMMAND,
        DIRECTORY,
        ANNOUNCE,
        READY,
        DRAIN,
        BYE,
        HEARTBEAT,
        RESET,
        DSUB,
        DACK,
        APPROVALS,
        APPROVE,
        TRACE,
        RECENT,
        REPLAY,
        LINK_STATE,
    )
)

# --- durable topics: [command, ...frames] ------------------------------------------

PUBLISH = b"PUBLISH"
"""peer -> broker ``[PUBLISH, topic, header, payload]``: log, then forward, then PUBACK."""
PUBACK = b"PUBACK"
"""broker -> peer ``[PUBACK, [[id, seq, error], ...], b""]``, one per publisher and
commit; ``error`` nil, ``NO_STORE``, ``TOO_LARGE``, ``MALFORMED``, ``STORE_FULL`` or
``STORE_FAILED`` (then ``seq`` is nil)."""
DELIVER = b"DELIVER"
"""broker -> durable subscriber ``[DELIVER, [seq, name], topic, header, payload]``."""

# --- federation: between a broker and its link (docs/federation.md) ---------------

FEVENT = b"FEVENT"
"""broker <-> link ``[FEVENT, qos, topic, header, payload]``: an event crossing the
federation. Broker -> link: a local event on an exported topic, its origin written in;
link -> broker: a remote one, delivered to local subscribers (never sent out again).
``qos`` is ``standard`` or ``reliable`` (logged by its broker)."""
INTEREST = b"INTEREST"
"""broker -> link ``{reset, add, remove}``: the subscription prefixes local peers hold
(``reset``: the whole set; then only the changes)."""
FDSUB = b"FDSUB"
"""broker -> link ``{req, name, patterns, peer}``: a durable subscription to serve from
JetStream; link -> broker ``{req, acked, last_seq}`` (or ``{req, code, message}``)."""
FDELIVER = b"FDELIVER"
"""link -> broker ``[FDELIVER, [peer, seq, name], topic, header, payload]``: a durable
event for the subscriber ``peer`` (its routing id, hex), ``seq`` the stream's."""
FDACK = b"FDACK"
"""broker -> link ``{name, seq}``: the subscriber handled everything up to ``seq``."""
FDGONE = b"FDGONE"
"""broker -> link ``{name}``: the subscriber is gone (its position stays in JetStream)."""
FEDERATION_QOS = frozenset((b"standard", b"reliable"))
FEDERATION_WORKER = "federation"
"""The worker name a federation link serves other brokers' tools under."""

# --- tool calls: [command, msgpack array meta, body] --------------------------------

CALL = b"CALL"
"""client -> broker ``[id, tool, timeout, trace]``; broker -> worker ``[token, tool, timeout,
trace]``; body: the arguments map."""
CANCEL = b"CANCEL"
RESULT = b"RESULT"
FAIL = b"FAIL"
PROGRESS = b"PROGRESS"

TOOL_COMMANDS = frozenset((CALL, CANCEL, RESULT, FAIL, PROGRESS))

DEFAULT_MAX_TIMEOUT = 3600.0
"""The longest timeout (seconds) a broker grants a call unless configured otherwise; a call
asking for more gets this much. Progress reports extend a call past it."""

ERROR_CODES = (
    "UNKNOWN_TOOL",
    "INVALID_PARAMS",
    "TIMEOUT",
    "WORKER_LOST",
    "TOOL_ERROR",
    "OVERLOADED",
    "CANCELLED",
    "TOO_LARGE",
    "MALFORMED",
    "BROKER_LOST",
    "LIMIT_EXCEEDED",
    "DENIED",
)
"""Codes a ``FAIL`` carries; ``docs/protocol.md`` says when each is used."""

_packb = msgpack.packb
_unpackb = msgpack.unpackb
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)


def encode_control(command: bytes, body: dict[str, Any]) -> list[bytes]:
    """Frames of a control message (without the ROUTER's identity frame)."""
    return [command, _packb(body)]


def decode_control(frames: list[bytes]) -> tuple[bytes, dict[str, Any]]:
    """Parse ``[command, body]``.

    Raises:
        ProtocolError: wrong frame count or a body that is not a msgpack map.
    """
    if len(frames) != 2:
        raise ProtocolError("frames", f"control message has {len(frames)} frames, expected 2")
    try:
        body = _unpackb(frames[1], strict_map_key=False)
    except Exception as exc:
        raise ProtocolError("body", f"control body is not msgpack: {exc}") from exc
    if not isinstance(body, dict):
        raise ProtocolError("body", "control body is not a map")
    return frames[0], body


def encode_call(
    call_id: int,
    tool: str,
    timeout: float | None,
    trace: bytes | None,
    args: bytes,
    *,
    caller: str | None = None,
) -> list[bytes]:
    """A ``CALL``'s frames; ``args`` is an already encoded msgpack map. ``caller``: the
    identity a federation link calls for (the broker takes it from its link only)."""
    if caller is None:
        return [CALL, _packb((call_id, tool, timeout, trace)), args]
    return [CALL, _packb((call_id, tool, timeout, trace, None, caller)), args]


class _CallMeta(msgspec.Struct, array_like=True, frozen=True, gc=False):
    id: int
    tool: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    timeout: Annotated[float, msgspec.Meta(gt=0.0, le=1e9)] | None
    trace: Annotated[bytes, msgspec.Meta(max_length=MAX_ID_BYTES)] | None
    approved_by: Annotated[str, msgspec.Meta(max_length=MAX_NAME_CHARS)] | None = None
    caller: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = None


class CallMeta(NamedTuple):
    """A ``CALL``'s meta frame, decoded."""

    id: int
    tool: str
    timeout: float | None
    trace: bytes | None
    approved_by: str | None
    """The approver's name, on calls the broker let through approval."""
    caller: str | None
    """The caller's identity, as the broker's authenticator knows it (the broker adds it
    to every call it forwards to a worker; ``anonymous`` on an ``--insecure`` broker)."""


_decode_call_meta = msgspec.msgpack.Decoder(_CallMeta).decode


def decode_call(meta: bytes) -> CallMeta:
    """A ``CALL``'s meta frame, ``[id, tool, timeout, trace]`` as a caller sends it; the
    broker adds ``approved_by`` (the approver's name, or nil) and ``caller`` (the caller's
    identity) to what it forwards to a worker. Every field is checked: a positive, finite
    timeout; a trace id of at most ``MAX_ID_BYTES`` (the broker keeps it with every
    answered call); an identity of Loom's alphabet.

    Raises:
        ProtocolError: not an array of that shape (``reason == "meta"``).
    """
    try:
        call = _decode_call_meta(meta)
    except msgspec.DecodeError as exc:
        raise ProtocolError("meta", f"CALL meta is not [id, tool, timeout, trace]: {exc}") from None
    return CallMeta(call.id, call.tool, call.timeout, call.trace, call.approved_by, call.caller)


_Acks = list[tuple[Annotated[bytes, msgspec.Meta(max_length=MAX_ID_BYTES)], int | None, str | None]]
_decode_acks = msgspec.msgpack.Decoder(_Acks).decode
_decode_delivery = msgspec.msgpack.Decoder(
    tuple[Annotated[int, msgspec.Meta(ge=1)], Annotated[str, msgspec.Meta(max_length=200)]]
).decode


def decode_acks(meta: bytes) -> list[tuple[bytes, int | None, str | None]]:
    """A ``PUBACK``'s ``[[id, seq, error], ...]``.

    Raises:
        ProtocolError: not a list of such triples (``reason == "meta"``).
    """
    try:
        return _decode_acks(meta)
    except msgspec.DecodeError as exc:
        raise ProtocolError("meta", f"PUBACK meta: {exc}") from None


def decode_delivery(meta: bytes) -> tuple[int, str]:
    """A ``DELIVER``'s ``[seq, name]``.

    Raises:
        ProtocolError: not such a pair (``reason == "meta"``).
    """
    try:
        return _decode_delivery(meta)
    except msgspec.DecodeError as exc:
        raise ProtocolError("meta", f"DELIVER meta: {exc}") from None


def encode_ref(command: bytes, ref: int, body: bytes = b"") -> list[bytes]:
    """``[command, [ref], body]``: a CANCEL, RESULT, FAIL or PROGRESS for call ``ref``."""
    return [command, _packb((ref,)), body]


def decode_ref(meta: bytes) -> int:
    """The call id (or broker token) a tool message's meta frame starts with.

    Raises:
        ProtocolError: not an array starting with an int (``reason == "meta"``).
    """
    try:
        fields = _unpackb(meta, use_list=False)
    except Exception as exc:
        raise ProtocolError("meta", f"meta is not msgpack: {exc}") from exc
    if type(fields) is not tuple or not fields or type(fields[0]) is not int:
        raise ProtocolError("meta", "meta must be an array starting with the call id")
    ref: int = fields[0]
    return ref


encode_value = encode_payload
"""A tool's arguments or result: the same rule as an event's data (``encode_payload``)."""


def decode_value(body: bytes) -> Any:
    """Decode a tool message body (``None`` when empty).

    Raises:
        ProtocolError: not msgpack (``reason == "body"``).
    """
    if not body:
        return None
    try:
        return _unpackb(body, strict_map_key=False)
    except Exception as exc:
        raise ProtocolError("body", f"body is not msgpack: {exc}") from exc


def encode_failure(code: str, message: str, **details: Any) -> bytes:
    """A ``FAIL`` body: ``{"code", "message", ...details}`` (``type`` for TOOL_ERROR,
    ``errors`` for INVALID_PARAMS, ``tool``)."""
    return _packb({"code": code, "message": message, **details}, default=str)  # type: ignore[no-any-return]


def decode_failure(body: bytes) -> dict[str, Any]:
    """A ``FAIL`` body as a map with at least ``code`` and ``message`` strings.

    Raises:
        ProtocolError: not a msgpack map (``reason == "body"``).
    """
    info = decode_value(body)
    if not isinstance(info, dict):
        raise ProtocolError("body", "FAIL body is not a map")
    info["code"] = str(info.get("code", "TOOL_ERROR"))
    info["message"] = str(info.get("message", ""))
    return info


def recv_frames(sock: zmq.Socket[bytes], flags: int = _NOBLOCK, max_frames: int = 0) -> list[bytes]:
    """Receive every frame of one message (``Frame.more``: cheaper than ``RCVMORE``).

    Args:
        max_frames: keep at most this many frames (0: no bound); a longer message is
            read to its end and refused.

    Raises:
        zmq.Again: nothing to receive (with ``NOBLOCK``).
        ProtocolError: more than ``max_frames`` frames (``reason == "frames"``); all of
            them have been consumed.
    """
    return _recv_all(sock, flags, max_frames)[0]


def recv_frames_signed(
    sock: zmq.Socket[bytes], flags: int = _NOBLOCK, max_frames: int = 0
) -> tuple[list[bytes], str]:
    """:func:`recv_frames`, and the ``User-Id`` of the connection the message came from
    (the identity the broker's authenticator gave it; ``""`` without one)."""
    frames, first = _recv_all(sock, flags, max_frames)
    return frames, user_id(first)


def _recv_all(sock: zmq.Socket[bytes], flags: int, max_frames: int) -> tuple[list[bytes], Any]:
    recv = sock.recv
    frame = first = recv(flags, False)
    frames = [frame.bytes]
    extra = 0
    while frame.more:
        frame = recv(0, False)
        if max_frames and len(frames) >= max_frames:
            extra += 1
            continue
        frames.append(frame.bytes)
    if extra:
        raise ProtocolError("frames", f"message of {len(frames) + extra} frames")
    return frames, first


def monitor_events(monitor: zmq.Socket[bytes]) -> Iterator[tuple[int, int, bytes]]:
    """The events waiting on a socket monitor (``get_monitor_socket``), each as
    ``(event, value, endpoint)``; ends when none waits, or the monitor is closed or
    garbled."""
    while True:
        try:
            event = parse_monitor_message(monitor.recv_multipart(_NOBLOCK))
        except (zmq.ZMQError, ValueError, IndexError, KeyError):  # zmq.Again included
            return
        yield int(event["event"]), int(event["value"]), bytes(event["endpoint"])


def send_frames(sock: zmq.Socket[bytes], frames: list[bytes], flags: int = _NOBLOCK) -> None:
    """Send one message (raises ``zmq.Again`` when it cannot be queued with ``NOBLOCK``)."""
    first = flags  # once the first frame is queued, zmq takes the rest of the message
    for frame in frames[:-1]:
        raw_send(sock, frame, first | _SNDMORE)
        first = 0
    raw_send(sock, frames[-1], first)
