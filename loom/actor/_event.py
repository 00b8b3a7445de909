"""What a handler receives."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from loom.logs import handled_event
from loom.protocol import REQUEST, Envelope, Kind

__all__ = ["Event", "current_event"]


class Event:
    """One message delivered to a handler.

    Attributes:
        topic: the topic it was published on.
        data: the decoded payload.
        envelope: the full header.
        seq: for an event of a durable subscription, its sequence number in the broker's
            log (else ``None``).
        stream: the durable subscription's name (else ``None``).
    """

    __slots__ = ("data", "envelope", "payload", "replied", "seq", "stream", "topic")

    def __init__(
        self,
        topic: str,
        data: Any,
        envelope: Envelope,
        seq: int | None = None,
        stream: str | None = None,
    ) -> None:
        self.topic = topic
        self.data = data
        self.envelope = envelope
        self.replied = False
        self.seq = seq
        self.stream = stream
        self.payload: bytes | None = None
        """The payload still to decode (``data`` is filled just before the handler runs,
        so the mailbox holds bytes, not the objects they decode to)."""

    @property
    def sender(self) -> str:
        """The name of the actor that sent it."""
        return self.envelope.sender

    @property
    def origin(self) -> str | None:
        """The identity the broker authenticated the sender as (its CURVE key's name in
        the ACL; ``local`` for the broker's own user), written by the broker: a peer
        cannot forge it. ``None`` from a broker run ``--insecure``."""
        return self.envelope.origin

    @property
    def id(self) -> str:
        """The message id, hex."""
        return self.envelope.id.hex()

    @property
    def kind(self) -> Kind:
        return Kind(self.envelope.kind)

    @property
    def is_request(self) -> bool:
        """True when the sender awaits a reply (``Actor.request``)."""
        return self.envelope.kind == REQUEST

    @property
    def thread_id(self) -> str | None:
        return self.envelope.thread_id

    @property
    def trace_id(self) -> str | None:
        trace = self.envelope.trace_id
        return trace.hex() if isinstance(trace, bytes) else None

    @property
    def timestamp(self) -> float:
        return self.envelope.timestamp

    def __repr__(self) -> str:
        return f"Event(topic={self.topic!r}, sender={self.sender!r}, data={self.data!r})"


current_event: ContextVar[Event | None] = handled_event
"""The event whose handler is running (inherited by tasks it creates): emits made there
carry its trace, thread and hop count, log lines its topic and trace."""
