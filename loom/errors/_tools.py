"""Tool calls' errors: the codes a call fails with, the sandbox, the built-in tools."""

from __future__ import annotations

from typing import Any

from loom.errors._core import LoomError

__all__ = [
    "BrokerLostError",
    "CallCancelledError",
    "CommandRefusedError",
    "DirectoryNotEmptyError",
    "FetchError",
    "FetchTimeoutError",
    "HostRefusedError",
    "InvalidParamsError",
    "JailRequiredError",
    "JailRootError",
    "NotAFileError",
    "OverloadedError",
    "PathEscapeError",
    "ResultTooLargeError",
    "SandboxUnavailableError",
    "ToolDefinitionError",
    "ToolDeniedError",
    "ToolError",
    "ToolFailedError",
    "ToolLimitError",
    "ToolTimeoutError",
    "UnknownTimeZoneError",
    "UnknownToolError",
    "WorkerLostError",
]


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

    def __init__(
        self,
        message: str,
        *,
        tool: str = "",
        details: dict[str, Any] | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.tool = tool
        self.details = details or {}
        if code is not None:
            self.code = code


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
    return _BY_CODE.get(code, ToolError)(message, tool=tool, details=details, code=code)


# --- the sandbox and the built-in tools ----------------------------------------------


class SandboxUnavailableError(LoomError):
    """A sandbox launcher could not start, or broke its protocol (its calls fail)."""


class UnknownTimeZoneError(LoomError, ValueError):
    """``time.now`` was given a name that is not in the time zone database."""


class HostRefusedError(LoomError, PermissionError):
    """The call's network policy does not let ``http.fetch`` reach a URL (the network is
    off, the host or port is not listed, or the host resolves to an address the policy
    excludes)."""


class FetchError(LoomError, ConnectionError):
    """An HTTP request failed: the host cannot be resolved or reached, the server broke
    the protocol, or it redirected too many times."""


class FetchTimeoutError(FetchError, TimeoutError):
    """The answer did not arrive completely within the call's ``timeout``."""


class JailRootError(LoomError, PermissionError):
    """``fs.delete`` was asked to delete the jail itself."""


class NotAFileError(LoomError, OSError):
    """The path names something that is not a regular file (a directory, a FIFO...)."""


class DirectoryNotEmptyError(LoomError, OSError):
    """``fs.delete`` was asked to delete a directory that has entries, without
    ``recursive``."""


class PathEscapeError(LoomError, PermissionError):
    """A path leads outside the tool's jail: an absolute path elsewhere, ``..`` above the
    jail, or a symbolic link whose target is outside it."""


class JailRequiredError(LoomError, PermissionError):
    """A file or command tool was called without a jail (its call has no sandbox policy
    and so no working directory to confine it to)."""


class CommandRefusedError(LoomError, PermissionError):
    """``shell.run`` refused a command line: the command is not allowed, or one of its
    options is unsafe."""
