"""``ChatClient``: an OpenAI-compatible chat-completions client (OpenAI, Ollama, vLLM...).

One POST to ``{base_url}/chat/completions`` per attempt, answered as JSON or, when
streaming, as Server-Sent Events whose content deltas and tool-call fragments are
assembled here. Transient failures (429, 500, 502, 503, 504, broken connections,
timeouts) are retried with exponential backoff; every failure ends as an
:class:`~loom.cognition.errors.LLMError`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from types import TracebackType
from typing import Any, Self

import httpx

from loom.cognition._config import LLMSettings
from loom.cognition._messages import (
    Completion,
    Message,
    StreamedCompletion,
    Usage,
    completion_from_json,
)
from loom.errors import (
    LLMAuthError,
    LLMConnectionError,
    LLMError,
    LLMRateLimitError,
    LLMRequestError,
    LLMResponseError,
    LLMServerError,
    LLMTimeoutError,
)
from loom.logs import get_logger

__all__ = ["RETRY_STATUSES", "ChatClient", "TokenCallback"]

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
"""HTTP statuses worth another attempt."""

TokenCallback = Callable[[str], Any]
"""Called with each piece of content as it arrives; may return an awaitable."""

_PATH = "chat/completions"
_JSON_HEADERS = {"Content-Type": "application/json"}
_STREAM_HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}


class ChatClient:
    """A client of one chat-completions endpoint; use it as an async context manager.

    Args:
        settings: the endpoint, model and retry policy.
        api_key: sent as ``Authorization: Bearer ...`` when given (see
            :func:`~loom.cognition._config.resolve_api_key`).
        transport: the httpx transport (default: a real HTTP transport; pass one with a
            proxy, or a mock, here). The environment (proxy variables) is not read.
        sleep: awaited between attempts with the delay in seconds.
        name: the provider's name in the logs (default: the model).

    Attributes:
        usage: the tokens of every completion returned so far, summed.
        calls: how many completions were returned.
    """

    def __init__(
        self,
        settings: LLMSettings,
        *,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        name: str | None = None,
    ) -> None:
        self.settings = settings
        self.usage = Usage()
        self.calls = 0
        headers = dict(settings.headers)
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.AsyncClient(
            base_url=settings.base_url + "/",
            timeout=settings.timeout,
            headers=headers,
            transport=transport,
            trust_env=False,
        )
        self._sleep = sleep
        self._log = get_logger("llm", provider=name or settings.model)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections; the client cannot be used afterwards."""
        await self._http.aclose()

    async def complete(
        self,
        messages: list[Message],
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        on_token: TokenCallback | None = None,
        stream: bool | None = None,
    ) -> Completion:
        """Ask the model for the next message of the conversation.

        Args:
            messages: the conversation, OpenAI-format dicts.
            tools: tool specs (:func:`~loom.cognition._messages.tool_spec`).
            tool_choice: ``auto``, ``none``, ``required`` or a function choice.
            on_token: called with each content delta, in order (sync or async). Without
                streaming it gets the whole content once.
            stream: stream the answer as server-sent events (default: when ``on_token``
                is given).

        Returns:
            The completion; its usage is added to :attr:`usage`.

        Raises:
            LLMAuthError: 401 or 403.
            LLMRateLimitError: 429 until the retries ran out.
            LLMServerError: a 5xx (500, 502, 503, 504 after the retries).
            LLMConnectionError: the server cannot be reached, or the connection broke.
            LLMTimeoutError: the server did not answer in time.
            LLMRequestError: another 4xx, or ``messages``/``tools`` are not JSON.
            LLMResponseError: the answer is not a chat completion, or the stream broke.
            LLMError: the client is closed.

            A stream that breaks after ``on_token`` got content is not retried (the
            tokens would come twice): its error is raised at once. Whatever ``on_token``
            raises propagates unchanged.
        """
        if self._http.is_closed:
            raise LLMError("the LLM client is closed")
        streaming = stream if stream is not None else on_token is not None
        body = self._body(messages, tools, tool_choice, streaming)
        attempt = 0
        while True:
            attempt += 1
            delivery = _Delivery(on_token)
            self._log.debug(
                "llm request",
                model=self.settings.model,
                stream=streaming,
                messages=len(messages),
                tools=len(tools or ()),
                attempt=attempt,
            )
            if self._http.is_closed:  # closed while we waited to retry
                raise LLMError("the LLM client was closed during the request")
            try:
                if streaming:
                    completion = await self._streamed(body, delivery)
                else:
                    completion = await self._single(body)
            except RuntimeError as exc:  # httpx: the client was closed under the request
                if not self._http.is_closed:
                    raise
                raise LLMError(f"the LLM client was closed during the request: {exc}") from exc
            except LLMError as exc:
                exc.attempts = attempt
                if delivery.count or attempt > self.settings.max_retries or not _retryable(exc):
                    raise
                delay = self._delay(attempt, exc.retry_after)
                self._log.warning(
                    "llm retry", status=exc.status, attempt=attempt, delay=delay, error=exc.detail
                )
                await self._sleep(delay)
                continue
            if not streaming and completion.content:
                await delivery(completion.content)
            self.calls += 1
            self.usage += completion.usage
            return completion

    def _body(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None,
        tool_choice: str | dict[str, Any] | None,
        streaming: bool,
    ) -> bytes:
        settings = self.settings
        payload: dict[str, Any] = {"model": settings.model, "messages": messages}
        if settings.temperature is not None:
            payload["temperature"] = settings.temperature
        if settings.max_tokens is not None:
            payload["max_tokens"] = settings.max_tokens
        if tools:
            payload["tools"] = tools
        if tool_choice is not None:
            payload["tool_choice"] = tool_choice
        if streaming:
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
        try:
            text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise LLMRequestError(f"the request cannot be encoded as JSON: {exc}") from exc
        return text.encode()

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        settings = self.settings
        if retry_after is not None:
            return min(retry_after, settings.max_backoff)
        return min(settings.backoff * 2.0 ** min(attempt - 1, 60), settings.max_backoff)

    async def _single(self, body: bytes) -> Completion:
        try:
            response = await self._http.post(_PATH, content=body, headers=_JSON_HEADERS)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        _check_status(response)
        return completion_from_json(_json_body(response), self.settings.model)

    async def _streamed(self, body: bytes, delivery: _Delivery) -> Completion:
        try:
            async with self._http.stream(
                "POST", _PATH, content=body, headers=_STREAM_HEADERS
            ) as response:
                if not response.is_success:
                    await response.aread()
                    _check_status(response)
                if response.headers.get("content-type", "").startswith("application/json"):
                    await response.aread()  # a server that does not stream
                    completion = completion_from_json(_json_body(response), self.settings.model)
                    if completion.content:
                        await delivery(completion.content)
                    return completion
                return await _read_stream(response, delivery, self.settings.model)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc

    def _transport_error(self, exc: httpx.HTTPError) -> LLMError:
        where = self.settings.base_url
        if isinstance(exc, httpx.TimeoutException):
            return LLMTimeoutError(
                f"{where} did not answer within {self.settings.timeout:g} s ({type(exc).__name__})"
            )
        if isinstance(exc, httpx.DecodingError):
            return LLMResponseError(f"the answer of {where} cannot be decoded: {exc}")
        return LLMConnectionError(f"cannot talk to {where}: {str(exc) or type(exc).__name__}")


class _Delivery:
    """Hands content to ``on_token`` and counts what it handed."""

    __slots__ = ("callback", "count")

    def __init__(self, callback: TokenCallback | None) -> None:
        self.callback = callback
        self.count = 0

    async def __call__(self, text: str) -> None:
        if self.callback is None:
            return
        self.count += 1
        result = self.callback(text)
        if inspect.isawaitable(result):
            await result


def _retryable(exc: LLMError) -> bool:
    if isinstance(exc, LLMRateLimitError | LLMConnectionError | LLMTimeoutError):
        return True
    return isinstance(exc, LLMServerError) and exc.status in RETRY_STATUSES


def _check_status(response: httpx.Response) -> None:
    """Raise the error a non-2xx answer means; the body must have been read."""
    status = response.status_code
    if 200 <= status < 300:
        return
    message = _server_message(response)
    what = f"{status} {response.reason_phrase}".strip()
    text = f"the server answered {what}" + (f": {message}" if message else "")
    if status in (401, 403):
        raise LLMAuthError(text, status=status)
    if status == 429:
        raise LLMRateLimitError(text, status=status, retry_after=_retry_after(response))
    if 500 <= status < 600:
        raise LLMServerError(text, status=status, retry_after=_retry_after(response))
    if 400 <= status < 500:
        raise LLMRequestError(text, status=status, server_message=message)
    raise LLMResponseError(f"unexpected answer {what}", status=status)


def _retry_after(response: httpx.Response) -> float | None:
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None  # absent, or an HTTP date: the backoff decides
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _server_message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:500]
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        for key in ("message", "detail"):
            if isinstance(data.get(key), str):
                return str(data[key])
    return json.dumps(data)[:500]


def _json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise LLMResponseError(
            f"the answer is not JSON: {response.text[:200]!r}", status=response.status_code
        ) from exc


async def _sse_data(lines: AsyncIterator[str]) -> AsyncGenerator[str, None]:
    """The data of each server-sent event (``data:`` lines joined, comments skipped)."""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value.removeprefix(" "))
    if data:
        yield "\n".join(data)


async def _read_stream(response: httpx.Response, delivery: _Delivery, model: str) -> Completion:
    stream = StreamedCompletion(model)
    async with aclosing(_sse_data(response.aiter_lines())) as events:
        async for data in events:
            if data.strip() == "[DONE]":
                return stream.result()
            try:
                chunk = json.loads(data)
            except ValueError as exc:
                raise LLMResponseError(
                    f"the event stream carries an event that is not JSON: {data[:200]!r}"
                ) from exc
            text = stream.feed(chunk)
            if text:
                await delivery(text)
    if stream.finish_reason is None:
        raise LLMResponseError("the event stream ended before the completion did")
    return stream.result()  # a server that does not send [DONE]
