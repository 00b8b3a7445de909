"""The control plane's bodies, typed: every field of every ``[command, body]`` map, both
ways, with its type and bound, checked by msgspec while it decodes.

A body is a msgpack map with string keys; unknown keys are ignored (a newer peer may
send more), a known key of the wrong type or past its bound makes the whole body
malformed. ``rid`` is the request id a peer picks and the broker echoes.

``docs/protocol.md`` is the normative description; keep the two in step.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import msgspec

from loom.errors import ProtocolError
from loom.protocol._envelope import (
    DEFAULT_MAX_PAYLOAD,
    MAX_ID_BYTES,
    MAX_NAME_CHARS,
    MAX_TOPIC_BYTES,
    VERSION,
)

__all__ = [
    "MAX_CONCURRENCY",
    "MAX_PATTERNS",
    "MAX_SCHEMA_BYTES",
    "MAX_TOOLS",
    "TOOL_NAME",
    "ApprovalsAnswer",
    "Approve",
    "Body",
    "Dack",
    "Dsub",
    "DsubAnswer",
    "Empty",
    "ErrorAnswer",
    "Heartbeat",
    "Hello",
    "HelloAnswer",
    "LinkState",
    "Patterns",
    "Ready",
    "Recent",
    "Replay",
    "ReplayAnswer",
    "ToolSpec",
    "Trace",
    "decode_body",
    "encode_body",
    "request_id",
]

TOOL_NAME = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"
"""A tool's name: dot-separated words of letters, digits, ``_`` and ``-`` (``fs.read``);
it becomes part of topics (``$approval.request.<tool>``)."""
MAX_PATTERNS = 10_000
"""Patterns one peer may announce (HELLO, ANNOUNCE); the directory keeps 8 KiB of them."""
MAX_TOOLS = 1000
"""Tools one READY may announce."""
MAX_SCHEMA_BYTES = 64 * 1024
"""A tool spec's largest encoded size (its schemas are most of it)."""
MAX_CONCURRENCY = 10_000
"""The most calls of one tool a worker may announce it runs at once."""

Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME_CHARS)]
PatternText = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TOPIC_BYTES)]
ToolName = Annotated[str, msgspec.Meta(pattern=TOOL_NAME, max_length=200)]
Count = Annotated[int, msgspec.Meta(ge=0)]
Positive = Annotated[float, msgspec.Meta(gt=0.0)]


class Body(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What every control body may carry: ``rid``, echoed in the answer."""

    rid: int | None = None


class Empty(Body, kw_only=True):
    """STATS, DIRECTORY, APPROVALS, DRAIN, BYE, and the bare answers (READY, DRAIN,
    HEARTBEAT, RESET, APPROVE): nothing but ``rid``."""


# --- peer -> broker ----------------------------------------------------------------


class Hello(Body, kw_only=True):
    """``HELLO``: the version check, and who the peer is."""

    version: int
    name: Name = "?"
    role: Annotated[str, msgspec.Meta(max_length=32)] = "client"
    pid: int | None = None
    incarnation: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    """This run of the peer (the same across reconnections): ``$sys`` events carry it,
    and an actor's name is refused to a second live incarnation..."""
    unique: bool = True
    """... unless both say ``unique: false`` (a tap, a one-shot publisher: many may share
    a name)."""
    patterns: Annotated[list[PatternText], msgspec.Meta(max_length=MAX_PATTERNS)] = []
    """Kept up to 8 KiB for the directory; the frame's size bounds what is read."""


GroupName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
"""A queue group's name, or an actor's member id: one topic token."""


class Patterns(Body, kw_only=True):
    """``ANNOUNCE``: an actor's subscription patterns now (for the directory), and its
    queue-group bindings: ``[group, pattern, redeliver]`` each, delivered to the member
    topic ``$q.<identity>.<member>.<group>.<topic>`` (the actor subscribes to it before
    it announces them)."""

    patterns: Annotated[list[PatternText], msgspec.Meta(max_length=MAX_PATTERNS)] = []
    groups: Annotated[
        list[tuple[GroupName, PatternText, bool]], msgspec.Meta(max_length=MAX_PATTERNS)
    ] = []
    member: GroupName | None = None


class ToolSpec(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One tool of a ``READY``."""

    name: ToolName
    schema: dict[str, Any]
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=MAX_CONCURRENCY)]
    timeout: Positive | None = None
    idempotent: bool = False
    description: str | None = ""
    returns: dict[str, Any] | None = None
    approval: bool = False
    sandbox: dict[Name, Annotated[str, msgspec.Meta(max_length=4096)]] | None = None
    """The layers confining the tool's calls, as its worker reported them."""
    annotations: dict[str, Any] | None = None
    """Hints about the tool (MCP's ``title``, ``readOnlyHint``...), JSON, for clients."""
    brokers: Annotated[list[Name], msgspec.Meta(max_length=256)] | None = None
    """The brokers elsewhere that serve the tool, when a federation link announces it
    (its calls go to them through NATS)."""

    def __post_init__(self) -> None:
        for schema in (self.schema, self.returns, self.annotations):
            if schema is not None and not _json_like(schema):
                raise ValueError(f"the schema of {self.name} is not JSON (maps with string keys)")


def _json_like(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is JSON: maps with string keys, lists, strings, numbers,
    booleans and nil, at most 32 deep (a schema goes out again in every DIRECTORY, and
    `loom list --json` prints it)."""
    if depth > 32:
        return False
    if isinstance(value, dict):
        return all(type(k) is str and _json_like(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(_json_like(v, depth + 1) for v in value)
    return value is None or type(value) in (str, int, float, bool)


class Ready(Body, kw_only=True):
    """``READY``: the tools a worker serves (READY again replaces them)."""

    name: Name = "worker"
    pid: int | None = None
    tools: Annotated[list[ToolSpec], msgspec.Meta(max_length=MAX_TOOLS)]


class LinkState(Body, kw_only=True):
    """``LINK``: a federation link's state, reported to its broker."""

    state: Literal["up", "down"]
    server: Annotated[str, msgspec.Meta(max_length=1024)] = ""
    """The NATS server the link is connected to (``""`` while down)."""
    backlog: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Events kept to send when NATS is back."""
    dropped: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Events dropped since the link started (realtime while down, backlog full)."""
    brokers: Annotated[list[Name], msgspec.Meta(max_length=10_000)] = []
    """The other brokers heard lately."""
    counts: dict[Name, Annotated[int, msgspec.Meta(ge=0)]] = {}
    """The link's counters (events out and in, copies dropped, events sent again...)."""


class Heartbeat(Body, kw_only=True):
    """``HEARTBEAT``: a sign of life, with the peer's own counters (filtered by role)."""

    stats: dict[Name, Any] | None = None


class Dsub(Body, kw_only=True):
    """``DSUB``: stream me the durable events of ``patterns`` as subscriber ``name``."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    patterns: Annotated[list[PatternText], msgspec.Meta(min_length=1, max_length=100)]


class Dack(Body, kw_only=True):
    """``DACK``: subscriber ``name`` handled everything up to ``seq``."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    seq: Count


class Replay(Body, kw_only=True):
    """``REPLAY``: logged events matching ``pattern`` after ``since`` (a sequence number)
    or logged at or after ``since_time`` (Unix seconds)."""

    pattern: PatternText = "**"
    since: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0
    since_time: float | None = None
    limit: int | None = None
    """At most this many (nil, or outside 1 to 1000: 1000)."""


class Approve(Body, kw_only=True):
    """``APPROVE``: decide the held call ``id``."""

    id: int
    approve: bool
    by: Name | None = None
    reason: str | None = ""
    """Said to the caller and published, its first 1000 characters."""


class Trace(Body, kw_only=True):
    """``TRACE``: one trace's record, its id in hex; or, with ``thread``, one thread's
    messages (``trace`` then empty)."""

    trace: Annotated[str, msgspec.Meta(max_length=2 * MAX_ID_BYTES)] = ""
    thread: Name | None = None


class Recent(Body, kw_only=True):
    """``RECENT``: what passed since the reader's cursors (-1 or nil: from the start)."""

    after: Annotated[int, msgspec.Meta(ge=-1)] | None = -1
    calls_after: Annotated[int, msgspec.Meta(ge=-1)] = -1
    limit: int | None = None
    """At most this many of each (nil, or outside 1 to 1000: 1000)."""


# --- broker -> peer ----------------------------------------------------------------


class HelloAnswer(Body, kw_only=True):
    """The answer to ``HELLO``: endpoints and the limits peers must keep."""

    pub: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    sub: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    version: int = VERSION
    broker: Name = "loom-broker"
    max_payload: Annotated[int, msgspec.Meta(ge=1)] = DEFAULT_MAX_PAYLOAD
    heartbeat: Positive = 1.0
    liveness: Annotated[int, msgspec.Meta(ge=1)] = 3
    max_call_timeout: Positive = 3600.0
    identity: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "anonymous"
    """Who the broker knows this peer as: the identity its CURVE key is enrolled under
    (its inbox topics are ``$inbox.<identity>.*``)."""
    insecure: bool = False
    """The broker runs without CURVE: anyone who can reach it may do anything."""


class ErrorAnswer(Body, kw_only=True):
    """``ERROR``: the broker refused a command."""

    code: Annotated[str, msgspec.Meta(max_length=64)]
    message: Annotated[str, msgspec.Meta(max_length=64 * 1024)] = ""
    version: int | None = None
    """With ``VERSION_MISMATCH``: the broker's version."""


class DsubAnswer(Body, kw_only=True):
    """The answer to ``DSUB``: where the subscriber stands in the log."""

    acked: Count = 0
    last_seq: Count = 0
    window: Annotated[int, msgspec.Meta(ge=1)] = 1000
    """Deliveries the broker sends ahead of acknowledgements."""


class ReplayAnswer(Body, kw_only=True):
    """The answer to ``REPLAY``: ``[seq, logged_at, topic, header, payload]`` each."""

    events: list[tuple[Count, float, bytes, bytes, bytes]]
    next: Count
    last_seq: Count


class ApprovalsAnswer(Body, kw_only=True):
    """The answer to ``APPROVALS``: the calls waiting for a decision."""

    pending: list[dict[str, Any]] = []


B = TypeVar("B", bound=msgspec.Struct)

_decoders: dict[type[Any], msgspec.msgpack.Decoder[Any]] = {}
_encode = msgspec.msgpack.Encoder().encode
_lenient = msgspec.msgpack.Decoder()


def _no_ext(code: int, data: memoryview) -> Any:
    raise msgspec.ValidationError(f"msgpack extension type {code} is not part of the protocol")


def encode_body(body: msgspec.Struct | dict[str, Any]) -> bytes:
    """A body's frame (a Struct of this module, or a plain map)."""
    return _encode(body)


def decode_body(frame: bytes, kind: type[B]) -> B:
    """Decode a body frame as ``kind``, checking every field.

    Raises:
        ProtocolError: not a msgpack map, or a field of the wrong type or past its bound
            (``reason == "body"``; the message names the field).
    """
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.msgpack.Decoder(kind, ext_hook=_no_ext)
    try:
        return decoder.decode(frame)  # type: ignore[no-any-return]
    except msgspec.DecodeError as exc:
        raise ProtocolError("body", f"{kind.__name__.lower()} body: {exc}") from None
    except RecursionError:  # nested deeper than the interpreter's stack
        raise ProtocolError("body", f"{kind.__name__.lower()} body nests too deep") from None


def request_id(frame: bytes) -> int | None:
    """The ``rid`` of a body that did not decode, if one can be read (to echo in the
    error answer)."""
    try:
        body = _lenient.decode(frame)
    except (msgspec.DecodeError, RecursionError):
        return None
    rid = body.get("rid") if isinstance(body, dict) else None
    return rid if type(rid) is int else None
