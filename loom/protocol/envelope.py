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
from typing import Any, NamedTuple

import msgpack
import zmq
import zmq.backend

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
    "HEADER_FIELDS",
    "MAX_HOPS",
    "MAX_TOPIC_BYTES",
    "REPLY",
    "REQUEST",
    "VERSION",
    "Envelope",
    "IdSource",
    "Kind",
    "check_header",
    "decode_header",
    "decode_payload",
    "decode_topic",
    "encode_header",
    "encode_payload",
    "encode_topic",
    "pack_header",
    "raw_send",
    "recv_message",
    "send_message",
]

VERSION = 1
"""Protocol version carried first in every header and in HELLO."""

DEFAULT_MAX_PAYLOAD = 1 << 20
"""Largest payload (bytes) a broker accepts unless configured otherwise."""

MAX_TOPIC_BYTES = 1024
MAX_HOPS = 32
"""Emits nested deeper than this inside handlers are refused (a loop, most likely)."""

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


class Envelope(NamedTuple):
    """The header of a pub/sub message; msgpack encodes it as an array in this order."""

    version: int
    kind: int
    id: bytes
    """16 bytes: the sender instance's 8-byte prefix, then a big-endian counter."""
    sender: str
    timestamp: float
    """Unix seconds when the message was sent."""
    correlation_id: bytes | None
    """For replies and errors: the ``id`` of the request answered."""
    reply_to: str | None
    """For requests: the topic the reply goes to."""
    thread_id: str | None
    deadline: float | None
    """Unix seconds after which the message is stale."""
    hops: int
    """How many handlers deep this message was emitted (0 = not inside a handler)."""
    trace_id: bytes | None
    parent_id: bytes | None
    """The ``id`` of the message whose handling caused this one."""
    content_type: str | None
    """``None``: the payload is msgpack; otherwise raw bytes of this media type."""


HEADER_FIELDS = len(Envelope._fields)

_packb = msgpack.packb
_unpackb = msgpack.unpackb
_KINDS = frozenset((EVENT, REQUEST, REPLY, ERROR))
_OPTIONAL_BYTES = (bytes, type(None))
_OPTIONAL_STR = (str, type(None))


def encode_header(envelope: Envelope) -> bytes:
    """Encode an envelope as the header frame."""
    return _packb(envelope)  # type: ignore[no-any-return]


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
) -> bytes:
    """Encode a header from its fields without building an :class:`Envelope` (hot path)."""
    return _packb(  # type: ignore[no-any-return]
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
        )
    )


def decode_header(frame: bytes) -> Envelope:
    """Decode a header frame, checking the types of the fields Loom relies on.

    Raises:
        VersionMismatchError: the header carries another protocol version.
        ProtocolError: the frame is not a valid header (``reason == "header"``).
    """
    fields = check_header(frame)
    if len(fields) > HEADER_FIELDS:  # a newer minor revision appended fields: ignore them
        fields = fields[:HEADER_FIELDS]
    envelope: Envelope = tuple.__new__(Envelope, fields)
    if not (
        envelope.kind in _KINDS
        and type(envelope.id) is bytes
        and type(envelope.sender) is str
        and type(envelope.hops) is int
        and isinstance(envelope.correlation_id, _OPTIONAL_BYTES)
        and isinstance(envelope.reply_to, _OPTIONAL_STR)
        and isinstance(envelope.content_type, _OPTIONAL_STR)
    ):
        raise ProtocolError("header", "header field has the wrong type")
    return envelope


def check_header(frame: bytes) -> tuple[Any, ...]:
    """The broker's cheaper check: a msgpack array of at least the envelope's length, of
    our version, with a numeric or nil deadline (the broker compares it). Other field
    types are left to the receiving actors (``decode_header``).

    Raises:
        VersionMismatchError: another protocol version.
        ProtocolError: not msgpack, or not such an array (``reason == "header"``).
    """
    try:
        fields = _unpackb(frame, use_list=False, strict_map_key=False)
    except Exception as exc:
        raise ProtocolError("header", f"header is not msgpack: {exc}") from exc
    if type(fields) is not tuple or len(fields) < HEADER_FIELDS:
        raise ProtocolError("header", "header is not an array of the envelope's fields")
    if fields[0] != VERSION:
        raise VersionMismatchError(VERSION, fields[0])
    deadline = fields[8]
    if deadline is not None and type(deadline) is not float and type(deadline) is not int:
        raise ProtocolError("header", "header deadline is not a number")
    return fields


def encode_payload(data: Any, limit: int = DEFAULT_MAX_PAYLOAD) -> bytes:
    """Encode user data as a msgpack payload.

    Raises:
        EncodeError: the data holds a type msgpack cannot encode.
        PayloadTooLargeError: the encoded payload is larger than ``limit``.
    """
    try:
        payload: bytes = _packb(data)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"cannot encode {type(data).__name__} as msgpack: {exc}") from exc
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
    """Decode a topic frame received from a peer.

    Raises:
        ProtocolError: empty, too long, or not UTF-8 (``reason == "topic"``).
    """
    if not frame or len(frame) > MAX_TOPIC_BYTES:
        raise ProtocolError("topic", f"topic frame of {len(frame)} bytes")
    try:
        return frame.decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError("topic", "topic is not UTF-8") from exc


def encode_topic(topic: str) -> bytes:
    """Validate a topic for publishing and return its frame.

    Raises:
        TopicError: empty, too long, an empty token, or a wildcard token.
    """
    if not isinstance(topic, str) or not topic:
        raise TopicError(f"topic must be a non-empty string, not {topic!r}")
    frame = topic.encode()
    if len(frame) > MAX_TOPIC_BYTES:
        raise TopicError(f"topic is longer than {MAX_TOPIC_BYTES} bytes")
    for token in topic.split("."):
        if not token or token in ("*", "**"):
            raise TopicError(f"topic {topic!r} has an empty or wildcard token")
    return frame


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
    return topic.bytes, header.bytes, payload.bytes


def send_message(
    sock: zmq.Socket[bytes], topic: bytes, header: bytes, payload: bytes, flags: int = _NOBLOCK
) -> None:
    """Send one ``[topic, header, payload]`` message (raises ``zmq.Again`` at the HWM)."""
    raw_send(sock, topic, flags | _SNDMORE)
    raw_send(sock, header, _SNDMORE)
    raw_send(sock, payload, 0)
