"""Cognition's errors: the LLM client, context engineering, agent memory."""

from __future__ import annotations

from loom.errors._core import LoomError

__all__ = [
    "ContextConfigError",
    "ContextError",
    "LLMAuthError",
    "LLMConfigError",
    "LLMConnectionError",
    "LLMError",
    "LLMRateLimitError",
    "LLMRequestError",
    "LLMResponseError",
    "LLMServerError",
    "LLMTimeoutError",
    "MemoryStoreError",
    "OffloadMissingError",
    "OffloadRefError",
    "ReducerError",
    "SummaryError",
    "ToolArgumentsError",
    "ToolListError",
    "ToolNameError",
]


class LLMError(LoomError):
    """The root of the LLM client's errors.

    Attributes:
        detail: what went wrong, without the attempt count.
        status: the HTTP status of the answer that failed, if there was one.
        attempts: how many requests were made before giving up (0: none was sent).
        retry_after: seconds the server asked to wait (``Retry-After``), if it did.
    """

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        attempts: int = 0,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.attempts = attempts
        self.retry_after = retry_after

    def __str__(self) -> str:
        if self.attempts > 1:
            return f"{self.detail} (after {self.attempts} attempts)"
        return self.detail


class LLMConfigError(LLMError, ValueError):
    """An ``[llm.NAME]`` table is invalid, or its API key variable is not set; the message
    names the key or the variable."""


class LLMAuthError(LLMError, PermissionError):
    """The server refused the credentials (401) or the access (403); never retried."""


class LLMRateLimitError(LLMError):
    """The server kept answering 429 (too many requests) until the retries ran out."""


class LLMServerError(LLMError):
    """The server failed (5xx); 500, 502, 503 and 504 are retried before this is raised."""


class LLMConnectionError(LLMError, ConnectionError):
    """The server could not be reached, or the connection broke, until the retries ran out."""


class LLMTimeoutError(LLMError, TimeoutError):
    """The server did not answer within the timeout, until the retries ran out."""


class LLMRequestError(LLMError, ValueError):
    """The request was refused: by the server (a 4xx other than 401, 403 and 429; the
    message carries the server's) or before sending (it cannot be encoded as JSON).
    Never retried.

    Attributes:
        server_message: the server's error message (empty when there is none).
    """

    def __init__(
        self, detail: str, *, status: int | None = None, attempts: int = 0, server_message: str = ""
    ) -> None:
        super().__init__(detail, status=status, attempts=attempts)
        self.server_message = server_message


class LLMResponseError(LLMError):
    """The answer is not what the chat-completions API promises: not JSON, not the
    expected shape, or a broken event stream."""


class ToolArgumentsError(LLMError, ValueError):
    """The arguments the model wrote for a tool call are not a JSON object."""


class ToolNameError(LLMError, ValueError):
    """A tool name cannot be mapped to an OpenAI function name, or a function name the
    model produced does not map back to a Loom tool name."""


# --- context engineering and memory ----------------------------------------------------


class ContextError(LoomError):
    """The root of the context manager's errors."""


class ContextConfigError(ContextError, ValueError):
    """A ``ContextConfig`` value is out of range; the message names the field."""


class ReducerError(ContextError):
    """A reducer raised on a step's result; the original exception is the ``__cause__``."""


class SummaryError(ContextError):
    """The summarizer produced no summary (an empty answer from the model)."""


class OffloadRefError(ContextError, ValueError):
    """A reference is not ``offload://`` and 16 lowercase hex digits (or a bare id), or a
    read range is negative."""


class OffloadMissingError(ContextError, LookupError):
    """No stored output has that id: it was never stored, or it expired and was removed."""


class ToolListError(ContextError, ValueError):
    """A tool list names the same tool twice."""


class MemoryStoreError(LoomError):
    """The memory store cannot be opened or written (disk full, map full, corrupt)."""
