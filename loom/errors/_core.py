"""The mesh's errors: the root, bad bytes, the verbs' failures, configuration, the log."""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BrokerUnavailableError",
    "ClosedError",
    "ConfigError",
    "EncodeError",
    "EndpointError",
    "HeaderError",
    "HopLimitError",
    "KeyFileError",
    "LoomError",
    "NoReplyToError",
    "PatternError",
    "PayloadTooLargeError",
    "ProtocolError",
    "RemoteError",
    "RequestTimeoutError",
    "StoreError",
    "StoreFullError",
    "TargetError",
    "TopicError",
    "VersionMismatchError",
]


class LoomError(Exception):
    """The root of every error Loom raises."""


class ProtocolError(LoomError):
    """Bytes on the wire do not follow the Loom protocol (frames, header, topic)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        """A short, stable key for the kind of fault (``frames``, ``header``, ``topic``...)."""


class VersionMismatchError(ProtocolError):
    """The peer speaks another protocol version."""

    def __init__(self, ours: int, theirs: object) -> None:
        super().__init__("version", f"protocol version {theirs!r} is not supported (ours: {ours})")
        self.ours = ours
        self.theirs = theirs


class EncodeError(LoomError, TypeError):
    """Data passed to Loom cannot be encoded with msgpack."""


class PayloadTooLargeError(LoomError, ValueError):
    """An encoded payload is larger than the broker accepts."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"payload of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class TopicError(LoomError, ValueError):
    """A topic is not a valid Loom topic (empty token, wildcard, not UTF-8...)."""


class PatternError(LoomError, ValueError):
    """A subscription pattern is not valid."""


class BrokerUnavailableError(LoomError, ConnectionError):
    """The broker did not answer, or did not confirm the link, within the deadline."""


class ClosedError(LoomError):
    """The actor is not running: it was never started, or it was stopped."""


class RequestTimeoutError(LoomError, TimeoutError):
    """No reply arrived before the request's deadline."""


class RemoteError(LoomError):
    """The handler that received a request raised; carries the remote type and message."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message


class HopLimitError(LoomError):
    """An emit would exceed the hop limit: a handler chain is probably looping."""


class NoReplyToError(LoomError, ValueError):
    """``reply`` was called for an event that is not a request."""


class TargetError(LoomError, ValueError):
    """A ``PATH_OR_MODULE[:attr]`` cannot be imported or does not name what it should."""


class HeaderError(LoomError, ValueError):
    """A value Loom would put in a message header is not one the protocol allows: an
    actor's name or a thread id that is not a string of at most 256 characters."""


class EndpointError(LoomError, ValueError):
    """An endpoint is not of an accepted form (``tcp://HOST:PORT``, ``ipc:///PATH``,
    ``inproc://NAME``); the message names it and the forms."""


class ConfigError(LoomError, ValueError):
    """A configuration file is missing, not TOML, or has an invalid key or value; the
    message names the file and the key."""


class AuthenticationError(LoomError, PermissionError):
    """The broker refused this peer's CURVE handshake: its key is not enrolled, or one
    side uses CURVE and the other does not; the message says which and what to do."""


class KeyFileError(LoomError):
    """A CURVE key file or the keys directory is missing, unreadable, not a key file, or
    readable by other users; the message names the path and what to do."""


class StoreError(LoomError):
    """The broker's durable log cannot be read or written (an I/O error, a corrupt file):
    the transaction is aborted, nothing of it is written."""


class StoreFullError(StoreError):
    """The broker's durable log is full (its map size, or the disk): the transaction is
    aborted, nothing of it is written."""
