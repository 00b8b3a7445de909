"""The broker's refusals: a control command answered ``ERROR``, one class per code."""

from __future__ import annotations

from loom.errors._core import LoomError

__all__ = [
    "ApprovalError",
    "BrokerBusyError",
    "BrokerInternalError",
    "DuplicateNameError",
    "DurableError",
    "MalformedRequestError",
    "PermissionDeniedError",
    "RefusedError",
    "TooManyPeersError",
    "ToolsRefusedError",
    "UnknownCommandError",
    "UnknownPeerError",
]


class RefusedError(LoomError):
    """The broker refused a control command; ``code`` is the ``ERROR`` code it gave
    (``docs/protocol.md`` lists them) and the message its explanation."""

    code = "REFUSED"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class MalformedRequestError(RefusedError, ValueError):
    """The broker could not read the command: a field of the wrong type or size."""

    code = "MALFORMED"


class UnknownCommandError(RefusedError):
    """The broker does not know the command (another protocol revision?)."""

    code = "UNKNOWN_COMMAND"


class TooManyPeersError(RefusedError):
    """The broker's peer table is full."""

    code = "TOO_MANY_PEERS"


class UnknownPeerError(RefusedError):
    """The command needs a peer that said HELLO first (a durable subscription)."""

    code = "UNKNOWN_PEER"


class ToolsRefusedError(RefusedError, ValueError):
    """The broker refused a worker's tools (a spec too large, no room for more tools)."""

    code = "INVALID_READY"


class DuplicateNameError(RefusedError):
    """Another live actor has that name (names are unique; a restarted actor waits for its
    old run to be forgotten, ``liveness`` heartbeats at most)."""

    code = "DUPLICATE_NAME"


class DurableError(RefusedError):
    """The broker cannot keep durable events: it has no data_dir (``NO_STORE``) or no
    room for another durable subscription (``TOO_MANY``)."""

    code = "NO_STORE"


class ApprovalError(RefusedError, LookupError):
    """No call waits for approval under that id (decided, expired or cancelled)."""

    code = "UNKNOWN_APPROVAL"


class BrokerBusyError(RefusedError):
    """The broker limits how often it scans its buffers and log (TRACE, REPLAY): ask
    again in a moment."""

    code = "BUSY"


class BrokerInternalError(RefusedError):
    """The broker failed serving the command (a bug, logged on its side)."""

    code = "INTERNAL"


class PermissionDeniedError(RefusedError, PermissionError):
    """This peer's identity has no right to do that (the broker's ACL): publish or
    subscribe there, serve or call that tool, approve, read the directory, own that
    durable name. The message names the right missing."""

    code = "DENIED"


_BY_CODE: dict[str, type[RefusedError]] = {
    cls.code: cls
    for cls in (
        MalformedRequestError,
        UnknownCommandError,
        TooManyPeersError,
        UnknownPeerError,
        DuplicateNameError,
        ToolsRefusedError,
        DurableError,
        ApprovalError,
        BrokerBusyError,
        BrokerInternalError,
        PermissionDeniedError,
    )
}
_BY_CODE["TOO_MANY"] = DurableError


def refusal(code: str, message: str) -> RefusedError:
    """The ``RefusedError`` subclass for an ``ERROR`` ``code`` (the base class, with that
    code, for a code it does not know)."""
    return _BY_CODE.get(code, RefusedError)(message, code=code)
