"""Every error Loom raises derives from :class:`LoomError`.

Names describe a state. Where an error is also a standard condition (a timeout, a bad
value, an un-encodable type) it subclasses the matching builtin too, so ``except
TimeoutError`` works as a caller expects.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApprovalError",
    "BrokerLostError",
    "BrokerUnavailableError",
    "CallCancelledError",
    "ClosedError",
    "DurableError",
    "EncodeError",
    "HopLimitError",
    "InvalidParamsError",
    "LoomError",
    "NoReplyToError",
    "OverloadedError",
    "PatternError",
    "PayloadTooLargeError",
    "ProtocolError",
    "RemoteError",
    "RequestTimeoutError",
    "ResultTooLargeError",
    "TargetError",
    "ToolDefinitionError",
    "ToolDeniedError",
    "ToolError",
    "ToolFailedError",
    "ToolLimitError",
    "ToolTimeoutError",
    "TopicError",
    "UnknownToolError",
    "VersionMismatchError",
    "WorkerLostError",
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


class DurableError(LoomError):
    """The broker cannot keep durable events: it has no data_dir, or its log is full."""


class TargetError(LoomError, ValueError):
    """A ``PATH_OR_MODULE[:attr]`` cannot be imported or does not name what it should."""


class ToolDefinitionError(LoomError, TypeError):
    """A function cannot be made a tool (a parameter pydantic cannot describe, a bad name)."""


class ToolError(LoomError):
    """A tool call failed; ``code`` says how (``docs/protocol.md`` lists the codes).

    Attributes:
        code: the wire code (``UNKNOWN_TOOL``, ``INVALID_PARAMS``, ``TIMEOUT``...).
        tool: the tool's name.
        details: anything else the failure carried (``errors`` for INVALID_PARAMS...).
    """

    code = "TOOL_ERROR"

    def __init__(self, message: str, *, tool: str = "", details: dict[str, Any] | None = None):
        super().__init__(message)
        self.tool = tool
        self.details = details or {}


class UnknownToolError(ToolError):
    """No worker has announced a tool of that name."""

    code = "UNKNOWN_TOOL"


class InvalidParamsError(ToolError, ValueError):
    """The arguments do not match the tool's schema; the message names the field."""

    code = "INVALID_PARAMS"


class ToolTimeoutError(ToolError, TimeoutError):
    """The call did not finish, or report progress, within its timeout."""

    code = "TIMEOUT"


class WorkerLostError(ToolError):
    """The worker running the call died or left, and the call could not be retried."""

    code = "WORKER_LOST"


class ToolFailedError(ToolError):
    """The tool raised; ``type_name`` and ``remote_message`` say what it raised."""

    code = "TOOL_ERROR"

    @property
    def type_name(self) -> str:
        return str(self.details.get("type", "Exception"))

    @property
    def remote_message(self) -> str:
        return str(self.details.get("remote_message", ""))


class OverloadedError(ToolError):
    """Every worker of the tool is busy and its queue is full."""

    code = "OVERLOADED"


class CallCancelledError(ToolError):
    """The call was cancelled by the broker or the worker (a worker shutting down)."""

    code = "CANCELLED"


class ResultTooLargeError(ToolError, ValueError):
    """The arguments or the result are larger than the broker accepts."""

    code = "TOO_LARGE"


class ToolLimitError(ToolError):
    """The call's sandboxed process went past a limit of its policy and was stopped;
    ``limit`` says which (``cpu_seconds``, ``memory_mb``, ``wall_seconds``, ``processes``,
    ``file_size_mb``, ``open_files``) or ``crashed`` when it died of a signal."""

    code = "LIMIT_EXCEEDED"

    @property
    def limit(self) -> str:
        return str(self.details.get("limit", ""))


class ToolDeniedError(ToolError, PermissionError):
    """The tool needs approval, and an approver said no or nobody answered in time."""

    code = "DENIED"


class ApprovalError(LoomError, LookupError):
    """No call waits for approval under that id (decided, expired or cancelled)."""


class BrokerLostError(ToolError, ConnectionError):
    """The broker stopped answering while the call was in flight."""

    code = "BROKER_LOST"


_BY_CODE: dict[str, type[ToolError]] = {
    cls.code: cls
    for cls in (
        UnknownToolError,
        InvalidParamsError,
        ToolTimeoutError,
        WorkerLostError,
        ToolFailedError,
        OverloadedError,
        CallCancelledError,
        ResultTooLargeError,
        ToolLimitError,
        ToolDeniedError,
        BrokerLostError,
    )
}


def tool_error(
    code: str, message: str, *, tool: str = "", details: dict[str, Any] | None = None
) -> ToolError:
    """The ``ToolError`` subclass for a wire ``code`` (the base class for codes it does not
    know, with ``.code`` set to that code)."""
    cls = _BY_CODE.get(code)
    if cls is not None:
        return cls(message, tool=tool, details=details)
    error = ToolError(message, tool=tool, details=details)
    error.code = code
    return error
