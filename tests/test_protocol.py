"""The envelope, payload and control encodings, and how they reject bad bytes."""

from __future__ import annotations

import time

import msgpack
import msgspec
import pytest

from loom.errors import (
    EncodeError,
    PayloadTooLargeError,
    ProtocolError,
    TopicError,
    VersionMismatchError,
)
from loom.protocol import (
    HEADER_FIELDS,
    REQUEST,
    VERSION,
    Envelope,
    IdSource,
    decode_control,
    decode_header,
    decode_payload,
    decode_topic,
    encode_control,
    encode_header,
    encode_payload,
    encode_topic,
    pack_header,
)


def make_envelope(**changes: object) -> Envelope:
    env = Envelope(
        VERSION,
        REQUEST,
        b"\x01" * 16,
        "alice",
        time.time(),
        None,
        "$inbox.x",
        "t1",
        time.time() + 5,
        2,
        b"\x02" * 16,
        b"\x03" * 16,
        None,
    )
    return msgspec.structs.replace(env, **changes)


def test_header_round_trip() -> None:
    """An envelope survives encode/decode field for field."""
    env = make_envelope()
    assert decode_header(encode_header(env)) == env


def test_pack_header_matches_encode_header() -> None:
    """The hot-path packer writes the same bytes as encoding an Envelope."""
    env = make_envelope()
    assert pack_header(*msgspec.structs.astuple(env)[1:]) == encode_header(env)


def test_header_is_an_array_with_version_first() -> None:
    """On the wire the header is a msgpack array: version, kind, id, sender, ..."""
    fields = msgpack.unpackb(encode_header(make_envelope()))
    assert len(fields) == HEADER_FIELDS == 14
    assert fields[0] == VERSION
    assert fields[3] == "alice"


def test_newer_header_with_extra_fields_is_accepted() -> None:
    """Trailing fields a newer revision appends are ignored."""
    env = make_envelope()
    assert decode_header(msgpack.packb([*msgspec.structs.astuple(env), "future", 1])) == env


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\xc1",  # never used in msgpack
        b"not msgpack at all",
        msgpack.packb({"version": 1}),
        msgpack.packb([1, 0, b"id"]),  # too short
        msgpack.packb(msgspec.structs.astuple(make_envelope(sender=7))),
        msgpack.packb(msgspec.structs.astuple(make_envelope(id="text"))),
    ],
)
def test_bad_headers_raise_protocol_error(frame: bytes) -> None:
    """Undecodable or ill-typed headers raise ProtocolError with reason 'header'."""
    with pytest.raises(ProtocolError) as info:
        decode_header(frame)
    assert info.value.reason == "header"


def test_other_version_raises_version_mismatch() -> None:
    """A header of another protocol version raises VersionMismatchError."""
    with pytest.raises(VersionMismatchError) as info:
        decode_header(msgpack.packb([99, *msgspec.structs.astuple(make_envelope())[1:]]))
    assert info.value.reason == "version"
    assert info.value.theirs == 99


def test_payload_errors_are_typed() -> None:
    """Un-encodable data raises EncodeError (a TypeError); oversized raises at the limit."""
    with pytest.raises(EncodeError):
        encode_payload(object())
    with pytest.raises(TypeError):
        encode_payload({"x": object()})
    with pytest.raises(PayloadTooLargeError) as info:
        encode_payload(b"x" * 2000, limit=1000)
    assert info.value.limit == 1000
    assert decode_payload(encode_payload({"a": [1, 2]})) == {"a": [1, 2]}
    assert decode_payload(b"raw", "application/octet-stream") == b"raw"
    with pytest.raises(ProtocolError):
        decode_payload(b"\xc1")


@pytest.mark.parametrize("bad", ["", "a..b", "a.", "a.*", "a.**.b", "x" * 2000])
def test_invalid_topics_raise(bad: str) -> None:
    """Topics with empty or wildcard tokens, or too long, raise TopicError."""
    with pytest.raises(TopicError):
        encode_topic(bad)


def test_topic_frames() -> None:
    """Topic frames are UTF-8; others are protocol errors."""
    assert encode_topic("café.prix") == "café.prix".encode()
    assert decode_topic("café.prix".encode()) == "café.prix"
    with pytest.raises(ProtocolError):
        decode_topic(b"\xff\xfe")
    with pytest.raises(ProtocolError):
        decode_topic(b"")


def test_control_messages() -> None:
    """Control messages are [command, msgpack map]; anything else is a protocol error."""
    frames = encode_control(b"HELLO", {"version": 1})
    assert decode_control(frames) == (b"HELLO", {"version": 1})
    for bad in (
        [b"HELLO"],
        [b"HELLO", b"\xc1"],
        [b"HELLO", msgpack.packb([1])],
        [b"a", b"b", b"c"],
    ):
        with pytest.raises(ProtocolError):
            decode_control(bad)


def test_ids_are_unique_and_carry_the_instance_prefix() -> None:
    """Message ids are 16 bytes: the instance prefix then a counter."""
    source = IdSource()
    ids = {source.next() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(len(i) == 16 and i[:8] == source.prefix for i in ids)
    assert IdSource().prefix != source.prefix


def test_one_encoding_rule_for_events_and_tool_values() -> None:
    """An event's data and a tool's result follow one rule: msgpack's types as they are,
    what pydantic can make JSON-able converted (a datetime to its ISO string, a set to an
    array, a model to a map), anything else EncodeError, both ways alike."""
    import dataclasses
    import datetime

    from loom.protocol import encode_value

    @dataclasses.dataclass
    class Point:
        x: int

    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    value = {"when": when, "tags": {"a"}, "point": Point(1), "raw": b"\x00"}
    expected = {"when": "2026-01-02T03:04:05Z", "tags": ["a"], "point": {"x": 1}, "raw": b"\x00"}
    assert decode_payload(encode_payload(value)) == expected
    assert encode_value(value) == encode_payload(value)
    for encode in (encode_payload, encode_value):
        with pytest.raises(EncodeError):
            encode({"x": object()})
