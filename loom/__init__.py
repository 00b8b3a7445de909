"""Loom: a runtime for long-running AI agents that live as processes on a ZeroMQ mesh."""

from loom.actor import Actor, Event, on
from loom.errors import (
    BrokerUnavailableError,
    ClosedError,
    EncodeError,
    HopLimitError,
    LoomError,
    NoReplyToError,
    PatternError,
    PayloadTooLargeError,
    ProtocolError,
    RemoteError,
    RequestTimeoutError,
    TopicError,
    VersionMismatchError,
)
from loom.protocol import VERSION as PROTOCOL_VERSION

__version__ = "0.1.0"

__all__ = [
    "PROTOCOL_VERSION",
    "Actor",
    "BrokerUnavailableError",
    "ClosedError",
    "EncodeError",
    "Event",
    "HopLimitError",
    "LoomError",
    "NoReplyToError",
    "PatternError",
    "PayloadTooLargeError",
    "ProtocolError",
    "RemoteError",
    "RequestTimeoutError",
    "TopicError",
    "VersionMismatchError",
    "__version__",
    "on",
]
