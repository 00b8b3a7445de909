"""Errors of the LLM client: every one derives from :class:`LLMError` (a ``LoomError``).

A failure that was retried says how many attempts were made, both in ``.attempts`` and
in its message; an HTTP failure carries the status in ``.status``.
"""

from __future__ import annotations

from loom.errors import LoomError

__all__ = [
    "LLMAuthError",
    "LLMConfigError",
    "LLMConnectionError",
    "LLMError",
    "LLMRateLimitError",
    "LLMRequestError",
    "LLMResponseError",
    "LLMServerError",
    "LLMTimeoutError",
    "ToolArgumentsError",
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
