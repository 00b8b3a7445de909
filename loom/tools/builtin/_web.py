"""``http.fetch``: one HTTP request to a host the call's network policy allows.

Each URL (the first and every redirect) is checked by :mod:`loom.tools.builtin._net`:
``net.mode`` ``loopback`` allows hosts that resolve to loopback addresses only, ``hosts``
allows the names and addresses listed in ``net.hosts`` (none by default: operators list
them in the tool's configuration), and ``net.tcp_ports()`` bounds the port. The
connection goes to the addresses that were checked, whatever a later DNS answer says;
the request still names the host (``Host`` header, TLS server name and certificate).

The transport is httpcore (httpx's own) with a network backend that connects to the
checked addresses: httpx's client has no hook to choose the address it connects to.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NotRequired

import httpcore
import httpx
from pydantic import Field
from typing_extensions import TypedDict

from loom.errors import InvalidParamsError
from loom.tools._tool import ToolContext, tool
from loom.tools.builtin._net import (
    FetchError,
    FetchTimeoutError,
    HostRefusedError,
    Target,
    check,
    rules_of,
)
from loom.tools.sandbox._policy import Limits, NetRules, Sandbox

__all__ = [
    "FetchError",
    "FetchResult",
    "FetchTimeoutError",
    "HostRefusedError",
    "http_fetch",
]

_MAX_TIMEOUT = 120.0
_MAX_BODY = 1 << 24
_MAX_REDIRECTS = 5
_CHUNK = 1 << 16
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_SET_BY_US = frozenset({"host", "content-length", "transfer-encoding"})
_CREDENTIALS = frozenset({"authorization", "cookie", "proxy-authorization"})
"""Request headers dropped when a redirect leads to another origin."""
_TEXT_TYPES = frozenset(
    {"application/json", "application/xml", "application/javascript", "image/svg+xml"}
)
_SANDBOX = Sandbox(net=NetRules(mode="hosts"), limits=Limits(wall_seconds=_MAX_TIMEOUT + 10))
"""Hosts mode with no host listed: every URL is refused until an operator lists hosts."""

Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class FetchResult(TypedDict):
    """What ``http.fetch`` returns."""

    url: str
    """The URL that answered (after redirects)."""
    status: int
    headers: dict[str, str]
    """Response headers, names in lower case; repeated ones joined with ``, ``."""
    content: str | None
    """The body as text, or ``None`` when it is not text."""
    base64: NotRequired[str]
    """The body, base64-encoded, when it is not text."""
    truncated: bool
    """The body went on past ``max_bytes``."""


@dataclass
class _Request:
    """What is sent; a redirect may change it."""

    method: str
    headers: dict[str, str]
    content: bytes | None

    def forget_credentials(self) -> None:
        """Drop the headers that must not follow a redirect to another origin."""
        self.headers = {k: v for k, v in self.headers.items() if k not in _CREDENTIALS}


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connect to checked addresses, in order, whatever host name httpcore asks for."""

    def __init__(self, addresses: tuple[str, ...]) -> None:
        self._addresses = addresses
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        failure: httpcore.ConnectError | None = None
        for address in self._addresses:
            try:
                return await self._backend.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                failure = exc
        raise failure or httpcore.ConnectError(f"no address to connect to for {host}")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


@tool(name="http.fetch", timeout=_MAX_TIMEOUT + 5, sandbox=_SANDBOX)
async def http_fetch(
    url: str,
    ctx: ToolContext,
    *,
    method: Method = "GET",
    headers: dict[str, str] | None = None,
    body: str | None = None,
    max_bytes: Annotated[int, Field(ge=0, le=_MAX_BODY)] = 512_000,
    timeout: Annotated[float, Field(gt=0, le=_MAX_TIMEOUT)] = 10.0,
) -> FetchResult:
    """Fetch a URL over HTTP(S), following up to 5 redirects, from allowed hosts only.

    Args:
        url: an ``http`` or ``https`` URL.
        method: the request method; a 303 redirect (and a 301 or 302 after a POST) turns
            it into GET without a body.
        headers: request headers (``Host``, ``Content-Length`` and ``Transfer-Encoding``
            are set by the tool).
        body: a request body, sent as UTF-8.
        max_bytes: the most body bytes returned; the rest is not read. The default keeps
            a binary body, base64-encoded, under the broker's default 1 MiB payload.
        timeout: seconds for the whole exchange, redirects included.

    Raises:
        HostRefusedError: the network policy does not allow a URL on the way (no policy,
            mode ``none``, host, port or address not allowed).
        InvalidParamsError: the URL is not http(s) or is malformed, or a header is one
            the tool sets.
        FetchTimeoutError: the answer did not arrive within ``timeout``.
        FetchError: the host cannot be resolved or reached, the server broke HTTP, or it
            redirected more than 5 times.
    """
    net = rules_of(ctx)
    try:
        start = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise InvalidParamsError(f"{url!r} is not a valid URL: {exc}") from None
    request = _Request(
        method, _request_headers(headers or {}), None if body is None else body.encode("utf-8")
    )
    try:
        async with asyncio.timeout(timeout):
            return await _follow(net, start, request, max_bytes)
    except FetchError:
        raise
    except TimeoutError:
        raise FetchTimeoutError(f"{url}: no complete answer within {timeout} s") from None


async def _follow(net: NetRules, url: httpx.URL, request: _Request, max_bytes: int) -> FetchResult:
    for _ in range(_MAX_REDIRECTS + 1):
        target = await check(net, url)
        status, answer, data, truncated = await _exchange(target, request, max_bytes)
        location = answer.get("location")
        if status not in _REDIRECTS or not location:
            return _result(url, status, answer, data, truncated)
        try:
            following = url.join(location)
        except httpx.InvalidURL as exc:
            raise FetchError(f"{url} redirected to an invalid URL {location!r}") from exc
        if status == 303 or (status in (301, 302) and request.method == "POST"):
            request.method = "HEAD" if request.method == "HEAD" else "GET"
            request.content = None
        if (following.scheme, following.host, following.port) != (url.scheme, url.host, url.port):
            request.forget_credentials()
        url = following
    raise FetchError(f"{url}: more than {_MAX_REDIRECTS} redirects")


async def _exchange(
    target: Target, request: _Request, limit: int
) -> tuple[int, dict[str, str], bytes, bool]:
    """One request: the status, the response headers, up to ``limit`` body bytes (none
    for a redirect) and whether the body went on."""
    data = bytearray()
    truncated = False
    pool = httpcore.AsyncConnectionPool(
        network_backend=_PinnedBackend(target.addresses), max_connections=1
    )
    try:
        async with (
            pool,
            pool.stream(
                request.method,
                str(target.url),
                headers=list(request.headers.items()),
                content=request.content,
            ) as response,
        ):
            answer = _response_headers(response.headers)
            if response.status in _REDIRECTS and "location" in answer:
                return response.status, answer, b"", False
            async for chunk in response.aiter_stream():
                data += chunk
                if len(data) > limit:
                    truncated = True
                    del data[limit:]
                    break
    except (
        httpcore.NetworkError,
        httpcore.ProtocolError,
        httpcore.TimeoutException,
        httpcore.UnsupportedProtocol,
    ) as exc:
        raise FetchError(f"{target.url}: {type(exc).__name__}: {exc}") from exc
    return response.status, answer, bytes(data), truncated


def _request_headers(headers: dict[str, str]) -> dict[str, str]:
    """The caller's headers, names in lower case, with the tool's defaults.

    Raises:
        InvalidParamsError: a header is one the tool sets.
    """
    given = {name.lower(): value for name, value in headers.items()}
    refused = sorted(given.keys() & _SET_BY_US)
    if refused:
        raise InvalidParamsError(f"headers {refused} are set by http.fetch and cannot be given")
    return {"user-agent": "loom-http-fetch", "accept-encoding": "identity", **given}


def _response_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name_bytes, value_bytes in raw:
        name, value = name_bytes.decode("latin-1").lower(), value_bytes.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def _result(
    url: httpx.URL, status: int, headers: dict[str, str], data: bytes, truncated: bool
) -> FetchResult:
    result: FetchResult = {
        "url": str(url),
        "status": status,
        "headers": headers,
        "content": _text(data, truncated, headers.get("content-type", "")),
        "truncated": truncated,
    }
    if result["content"] is None:
        result["base64"] = base64.b64encode(data).decode("ascii")
    return result


def _text(data: bytes, truncated: bool, content_type: str) -> str | None:
    """The body as text when its type is textual (or not given) and it decodes with its
    charset (UTF-8 by default); a body cut short may end in part of a character, which
    is left out. ``None`` otherwise."""
    mime, *params = (part.strip() for part in content_type.split(";"))
    mime = mime.lower()
    textual = (
        not mime
        or mime.startswith("text/")
        or mime in _TEXT_TYPES
        or mime.endswith(("+json", "+xml"))
    )
    if not textual:
        return None
    charset = "utf-8"
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip(' "'):
            charset = value.strip(' "')
    try:
        return codecs.getincrementaldecoder(charset)().decode(data, final=not truncated)
    except (LookupError, UnicodeDecodeError):
        return None
