"""The pub/sub plane's envelope: ``[topic, header, payload]`` frames <-> objects.

Pub/sub plane, every message is three frames: ``[topic, header, payload]``.

* ``topic``: UTF-8, dot-separated, non-empty tokens.
* ``header``: a msgpack array, :class:`Envelope` field order, version first.
* ``payload``: msgpack bytes (or raw bytes when the header names a content type).

``docs/protocol.md`` is the normative description; keep the two in step.
"""

from __future__ import annotations

import os
import struct
from enum import IntEnum
from typing import Annotated, Any

import msgpack
import msgspec
import zmq
import zmq.backend
from pydantic_core import to_jsonable_python

from loom.errors import (
    EncodeError,
    PayloadTooLargeError,
    ProtocolError,
    TopicError,
    VersionMismatchError,
)

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "ERROR",
    "EVENT",
    "FRAME_SLACK",
    "HEADER_FIELDS",
    "MAX_ANSWER_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_HOPS",
    "MAX_ID_BYTES",
    "MAX_NAME_CHARS",
    "MAX_SUBSCRIPTION_FRAME",
    "MAX_TOKENS",
    "MAX_TOPIC_BYTES",
    "REPLY",
    "REQUEST",
    "VERSION",
    "Envelope",
    "IdSource",
    "Kind",
    "decode_header",
    "decode_payload",
    "decode_topic",
    "encode_header",
    "encode_payload",
    "encode_topic",
    "header_id",
    "kind_name",
    "max_frame",
    "pack_header",
    "queue_messages",
    "raw_send",
    "recv_message",
    "recv_signed",
    "send_message",
    "user_id",
]

VERSION = 1
"""Protocol version carried first in every header and in HELLO."""

DEFAULT_MAX_PAYLOAD = 1 << 20
"""Largest payload (bytes) a broker accepts unless configured otherwise."""

MAX_TOPIC_BYTES = 1024
"""Longest topic (and pattern), UTF-8 bytes."""
MAX_TOKENS = 128
"""Most dot-separated tokens in a topic or a pattern."""
MAX_HEADER_BYTES = 8192
"""Largest header frame (every field at its bound fits); a bigger one is malformed
whatever it holds (fields a newer revision appends included)."""
MAX_ID_BYTES = 64
"""Longest message, correlation, trace or parent id."""
MAX_NAME_CHARS = 256
"""Longest sender, thread id or content type (and peer or tool name elsewhere)."""
MAX_HOPS = 32
"""Emits nested deeper than this inside handlers are refused (a loop, most likely)."""
FRAME_SLACK = 64 * 1024
"""What a frame may hold besides a payload at the limit (a header, a tool call's meta)."""
MAX_SUBSCRIPTION_FRAME = MAX_TOPIC_BYTES + 64
"""A subscription frame: a flag byte (or ZMTP 3.1's ``\x09SUBSCRIBE`` command, 10 bytes)
then the prefix, with room to spare."""
MAX_ANSWER_BYTES = 256 << 20
"""The largest control answer a peer reads (STATS and DIRECTORY list every peer and tool:
about 10 KB a peer and 16 MiB of tool specs at the most)."""


def max_frame(max_payload: int) -> int:
    """The largest frame a socket carrying payloads of up to ``max_payload`` bytes takes
    (``ZMQ_MAXMSGSIZE``: libzmq disconnects a peer that announces a bigger one before
    reading it)."""
    return max_payload + FRAME_SLACK


def queue_messages(hwm: int, queue_bytes: int, frame: int) -> int:
    """A high-water mark (libzmq counts messages, not bytes) that holds one connection's
    queue to about ``queue_bytes`` when every message is as large as ``frame``: ``hwm``
    for small frames, fewer (16 at least) for large ones.

    Measured here (``bench/pubsub.py``): an XPUB mark of 250 messages forwards as fast
    as 1000; 60 costs a quarter of the throughput of small messages."""
    return min(hwm, max(16, queue_bytes // frame))


# Kinds as plain ints: compared on the hot path, where an enum costs.
EVENT = 0
REQUEST = 1
REPLY = 2
ERROR = 3


class Kind(IntEnum):
    """Readable names for the header's ``kind`` field."""

    EVENT = EVENT
    REQUEST = REQUEST
    REPLY = REPLY
    ERROR = ERROR


def kind_name(kind: object) -> str:
    """A header's ``kind`` as every JSON output shows it: ``event``, ``request``,
    ``reply``, ``error`` (``unknown`` for anything else)."""
    return Kind(kind).name.lower() if kind in (EVENT, REQUEST, REPLY, ERROR) else "unknown"


_Id = Annotated[bytes, msgspec.Meta(min_length=1, max_length=MAX_ID_BYTES)]
_Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME_CHARS)]
_Topic = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TOPIC_BYTES)]


class Envelope(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """The header of a pub/sub message; encoded as a msgpack array in this order.

    Decoding checks every field's type and bound (``decode_header``): a header that
    passes can be read by any Loom peer.
    """

    version: int
    kind: Annotated[int, msgspec.Meta(ge=EVENT, le=ERROR)]
    id: _Id
    """Up to 64 bytes; Loom's are 16: the sender instance's 8-byte prefix, then a
    big-endian counter."""
    sender: _Name
    timestamp: float
    """Unix seconds when the message was sent."""
    correlation_id: _Id | None
    """For replies and errors: the ``id`` of the request answered."""
    reply_to: _Topic | None
    """For requests: the topic the reply goes to."""
    thread_id: _Name | None
    deadline: float | None
    """Unix seconds after which the message is stale."""
    hops: Annotated[int, msgspec.Meta(ge=0)]
    """How many handlers deep this message was emitted (0 = not inside a handler)."""
    trace_id: _Id | None
    parent_id: _Id | None
    """The ``id`` of the message whose handling caused this one."""
    content_type: _Name | None
    """``None``: the payload is msgpack; otherwise raw bytes of this media type."""
    origin: _Name | None = None
    """The identity that published the message, written by the broker (a peer sends
    ``None``): who spoke, in a form that survives forwarding (message properties do not).
    ``None`` on a broker started ``--insecure``."""


HEADER_FIELDS = len(Envelope.__struct_fields__)

_packb = msgpack.packb
_unpackb = msgpack.unpackb
_encode = msgspec.msgpack.Encoder().encode
"""msgspec's encoder: the same bytes as msgpack's for a header, in a quarter of the time."""
_decode_envelope = msgspec.msgpack.Decoder(Envelope).decode


def encode_header(envelope: Envelope) -> bytes:
    """Encode an envelope as the header frame."""
    return _encode(envelope)


def pack_header(  # noqa: PLR0917 - positional on purpose: the hot path
    kind: int,
    mid: bytes,
    sender: str,
    timestamp: float,
    correlation_id: bytes | None,
    reply_to: str | None,
    thread_id: str | None,
    deadline: float | None,
    hops: int,
    trace_id: bytes,
    parent_id: bytes | None,
    content_type: str | None = None,
    origin: str | None = None,
) -> bytes:
    """Encode a header from its fields without building an :class:`Envelope` (hot path)."""
    return _encode(
        (
            VERSION,
            kind,
            mid,
            sender,
            timestamp,
            correlation_id,
            reply_to,
            thread_id,
            deadline,
            hops,
            trace_id,
            parent_id,
            content_type,
            origin,
        )
    )


def decode_header(frame: bytes) -> Envelope:
    """Decode a header frame, checking the type and bound of every field.

    msgspec checks the fields in C while it decodes (~0.5 us, as much as a bare
    ``msgpack.unpackb``); fields a newer minor revision appends are ignored.

    Raises:
        VersionMismatchError: the header carries another protocol version.
        ProtocolError: the frame is not a valid header (``reason == "header"``).
    """
    if len(frame) > MAX_HEADER_BYTES:
        raise ProtocolError("header", f"header of {len(frame)} bytes (limit {MAX_HEADER_BYTES})")
    try:
        envelope = _decode_envelope(frame)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise _header_error(frame, exc) from None
    if envelope.version != VERSION:
        raise VersionMismatchError(VERSION, envelope.version)
    return envelope


def header_id(frame: bytes) -> bytes | None:
    """The id of a header that did not decode, if it can be read: bytes of at most
    ``MAX_ID_BYTES`` where the id belongs (to say which message was refused)."""
    if len(frame) > MAX_HEADER_BYTES:
        return None
    try:
        fields = _unpackb(frame, use_list=False, strict_map_key=False)
    except Exception:
        return None
    if type(fields) is not tuple or len(fields) < 3:
        return None
    mid = fields[2]
    return mid if type(mid) is bytes and len(mid) <= MAX_ID_BYTES else None


def _header_error(frame: bytes, exc: msgspec.DecodeError) -> ProtocolError:
    """The error for a header that did not decode: another version if it says so (its
    layout may differ), else what msgspec found, naming the field."""
    try:
        fields = _unpackb(frame, use_list=False, strict_map_key=False)
    except Exception:
        return ProtocolError("header", f"header is not msgpack: {exc}")
    if type(fields) is tuple and fields and type(fields[0]) is int and fields[0] != VERSION:
        return VersionMismatchError(VERSION, fields[0])
    message = str(exc)
    names = Envelope.__struct_fields__
    for index, name in enumerate(names):
        message = message.replace(f"`$[{index}]`", f"`{name}`")
    if type(fields) is not tuple or len(fields) < HEADER_FIELDS:
        message = f"header is not an array of the envelope's {HEADER_FIELDS} fields"
    return ProtocolError("header", f"bad header: {message}")


def encode_payload(data: Any, limit: int = DEFAULT_MAX_PAYLOAD) -> bytes:
    """Encode a value for the wire: an event's data, a reply, a tool's arguments or
    result, all by one rule. msgpack's types (nil, booleans, integers, floats, strings,
    bytes, arrays, maps) go as they are; anything else pydantic can make JSON-able is
    converted first (models and dataclasses become maps, datetimes ISO strings, sets and
    tuples arrays, enums their value, paths and UUIDs strings). Converting costs nothing
    for values that need none.

    Raises:
        EncodeError: the data holds a value neither can encode (an arbitrary object).
        PayloadTooLargeError: the encoded payload is larger than ``limit``.
    """
    try:
        payload: bytes = _packb(data, default=to_jsonable_python)
    except Exception as exc:  # msgpack's TypeError/OverflowError, pydantic's own
        raise EncodeError(f"cannot encode {type(data).__name__}: {exc}") from exc
    if len(payload) > limit:
        raise PayloadTooLargeError(len(payload), limit)
    return payload


def decode_payload(frame: bytes, content_type: str | None = None) -> Any:
    """Decode a payload frame: msgpack, or the raw bytes when a content type is set.

    Raises:
        ProtocolError: the payload is not valid msgpack (``reason == "payload"``).
    """
    if content_type is not None:
        return frame
    try:
        return _unpackb(frame, strict_map_key=False)
    except Exception as exc:
        raise ProtocolError("payload", f"payload is not msgpack: {exc}") from exc


def decode_topic(frame: bytes) -> str:
    """Decode a topic frame received from a peer, checking the topic grammar.

    Raises:
        ProtocolError: empty, too long, not UTF-8, more than ``MAX_TOKENS`` tokens, an
            empty token or a wildcard token (``reason == "topic"``).
    """
    if not frame or len(frame) > MAX_TOPIC_BYTES:
        raise ProtocolError("topic", f"topic frame of {len(frame)} bytes")
    try:
        text = frame.decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError("topic", "topic is not UTF-8") from exc
    problem = _topic_problem(text)
    if problem is not None:
        raise ProtocolError("topic", problem)
    return text


def encode_topic(topic: str) -> bytes:
    """Validate a topic for publishing and return its frame.

    Raises:
        TopicError: empty, too long, too many tokens, an empty token, or a wildcard token.
    """
    if not isinstance(topic, str) or not topic:
        raise TopicError(f"topic must be a non-empty string, not {topic!r}")
    frame = topic.encode()
    if len(frame) > MAX_TOPIC_BYTES:
        raise TopicError(f"topic is longer than {MAX_TOPIC_BYTES} bytes")
    problem = _topic_problem(topic)
    if problem is not None:
        raise TopicError(problem)
    return frame


def _topic_problem(topic: str) -> str | None:
    """What is wrong with a topic's tokens (None: nothing)."""
    tokens = topic.split(".")
    if len(tokens) > MAX_TOKENS:
        return f"topic has {len(tokens)} tokens (limit {MAX_TOKENS})"
    for token in tokens:
        if not token or token in ("*", "**"):
            return f"topic {topic[:80]!r} has an empty or wildcard token"
    return None


class IdSource:
    """Message ids: an 8-byte random instance prefix followed by a counter.

    Unique across processes and restarts without a uuid per message (uuid4 costs ~2 us).
    """

    __slots__ = ("_count", "prefix")

    def __init__(self, prefix: bytes | None = None) -> None:
        self.prefix = prefix if prefix is not None else os.urandom(8)
        self._count = 0

    def next(self) -> bytes:
        """Return a fresh 16-byte id."""
        self._count += 1
        return self.prefix + _COUNTER.pack(self._count)


_COUNTER = struct.Struct(">Q")

# --- frames on sockets -------------------------------------------------------------

_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)

raw_send: Any = zmq.backend.Socket.send
"""``send`` of pyzmq's backend class, bypassing the Python wrapper of ``zmq.Socket``
(draft routing-id/group handling we never use): ~0.15 us less per frame. Called as
``raw_send(sock, data, flags)`` with ``bytes`` data."""


def recv_message(sock: zmq.Socket[bytes], flags: int = _NOBLOCK) -> tuple[bytes, bytes, bytes]:
    """Receive one ``[topic, header, payload]`` message.

    Frames are received as ``zmq.Frame`` to read their MORE flag: ``getsockopt(RCVMORE)``
    costs ~0.5 us in pyzmq (it builds an enum per call), ``Frame.more`` a fraction.

    Raises:
        zmq.Again: nothing to receive (with ``NOBLOCK``).
        ProtocolError: the message did not have exactly three frames (``reason ==
            "frames"``); all of its frames have been consumed.
    """
    topic, header, payload = _recv_three(sock, flags)
    return topic.bytes, header.bytes, payload.bytes


def recv_signed(sock: zmq.Socket[bytes], flags: int = _NOBLOCK) -> tuple[bytes, bytes, bytes, str]:
    """:func:`recv_message`, and the ``User-Id`` the broker's authenticator gave the
    connection it came from (its identity; ``""`` without one).

    Raises:
        zmq.Again: nothing to receive (with ``NOBLOCK``).
        ProtocolError: the message did not have exactly three frames.
    """
    topic, header, payload = _recv_three(sock, flags)
    return topic.bytes, header.bytes, payload.bytes, user_id(topic)


def _recv_three(sock: zmq.Socket[bytes], flags: int) -> tuple[zmq.Frame, zmq.Frame, zmq.Frame]:
    recv = sock.recv
    topic = recv(flags, False)
    if not topic.more:
        raise ProtocolError("frames", "message has 1 frame, expected 3")
    header = recv(0, False)
    if not header.more:
        raise ProtocolError("frames", "message has 2 frames, expected 3")
    payload = recv(0, False)
    if payload.more:
        extra = 0
        while recv(0, False).more:
            extra += 1
        raise ProtocolError("frames", f"message has {4 + extra} frames, expected 3")
    return topic, header, payload


def user_id(frame: zmq.Frame) -> str:
    """The ``User-Id`` of a received frame (``""`` when its connection has none)."""
    try:
        return str(frame.get("User-Id"))
    except zmq.ZMQError:
        return ""


def send_message(
    sock: zmq.Socket[bytes], topic: bytes, header: bytes, payload: bytes, flags: int = _NOBLOCK
) -> None:
    """Send one ``[topic, header, payload]`` message (raises ``zmq.Again`` at the HWM)."""
    raw_send(sock, topic, flags | _SNDMORE)
    raw_send(sock, header, _SNDMORE)
    raw_send(sock, payload, 0)
