"""``http.fetch`` against a real HTTP server on loopback, under each network policy."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from loom.errors import InvalidParamsError
from loom.tools._tool import ToolContext
from loom.tools.builtin import FetchError, FetchTimeoutError, HostRefusedError, http_fetch
from loom.tools.builtin._net import Target, check
from loom.tools.builtin._web import _exchange, _Request
from loom.tools.sandbox._policy import NetRules, Sandbox

MakeContext = Callable[..., ToolContext]
BIG = bytes(range(256)) * 40
"""10 240 bytes that are not UTF-8."""


@pytest.fixture
def context() -> MakeContext:
    """Make a call context for a tool (no jail: http.fetch needs none)."""

    def make(tool: str, *, jail: Path | None = None, sandbox: Sandbox | None = None) -> ToolContext:
        return ToolContext(1, tool, 10.0, lambda call, data: None, sandbox=sandbox, jail=jail)

    return make


class Handler(BaseHTTPRequestHandler):
    """A few routes: text, binary, echo, redirects, and an answer that never comes."""

    server: Server

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        url = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        if url.path == "/text":
            self._send(200, b"hello", "text/plain; charset=utf-8")
        elif url.path == "/big":
            self._send(200, BIG, "application/octet-stream")
        elif url.path == "/echo":
            length = int(self.headers.get("Content-Length", "0"))
            echo = {
                "method": self.command,
                "body": self.rfile.read(length).decode(),
                "host": self.headers["Host"],
                "auth": self.headers.get("Authorization"),
            }
            self._send(200, json.dumps(echo).encode(), "application/json")
        elif url.path == "/redirect":
            self._send(int(query.get("status", "302")), b"", "text/plain", query["to"])
        elif url.path == "/loop":
            self._send(302, b"", "text/plain", "/loop")
        elif url.path == "/hang":
            self.server.release.wait(10)
            self._send(200, b"late", "text/plain")
        else:
            self._send(404, b"no such route", "text/plain")

    def _send(self, status: int, body: bytes, kind: str, location: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        if location is not None:
            self.send_header("Location", location)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test output is not the place for access logs."""


class Server(ThreadingHTTPServer):
    daemon_threads = True
    release: threading.Event
    """Set to let ``/hang`` answer (at teardown)."""


@pytest.fixture
def server() -> Iterator[str]:
    """An HTTP server on 127.0.0.1; yields its base URL."""
    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.release = threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def fetch(context: MakeContext, net: NetRules | None, url: str, **options: Any) -> Any:
    sandbox = None if net is None else Sandbox(net=net)
    ctx = context("http.fetch", jail=None, sandbox=sandbox)
    return asyncio.run(http_fetch.fn(url=url, ctx=ctx, **options))


LOOPBACK = NetRules(mode="loopback")


def test_loopback_mode_fetches_text(server: str, context: MakeContext) -> None:
    """In loopback mode a loopback server answers; text comes back as text."""
    result = fetch(context, LOOPBACK, f"{server}/text")
    assert result["status"] == 200
    assert result["content"] == "hello"
    assert result["truncated"] is False
    assert result["headers"]["content-type"] == "text/plain; charset=utf-8"
    assert "base64" not in result


def test_binary_is_base64_and_truncated(server: str, context: MakeContext) -> None:
    """A binary body comes back base64-encoded, cut at max_bytes."""
    whole = fetch(context, LOOPBACK, f"{server}/big")
    assert whole["content"] is None
    assert base64.b64decode(whole["base64"]) == BIG
    cut = fetch(context, LOOPBACK, f"{server}/big", max_bytes=100)
    assert cut["truncated"] is True
    assert base64.b64decode(cut["base64"]) == BIG[:100]


def test_post_sends_body_and_host(server: str, context: MakeContext) -> None:
    """The method, body and a Host header naming the URL's host reach the server."""
    result = fetch(context, LOOPBACK, f"{server}/echo", method="POST", body="ping")
    echo = json.loads(result["content"])
    assert echo == {
        "method": "POST",
        "body": "ping",
        "host": urlsplit(server).netloc,
        "auth": None,
    }


def test_connection_goes_to_the_checked_address(server: str, context: MakeContext) -> None:
    """The request connects to the addresses checked, never resolving the name again,
    and still names the host in its Host header."""
    port = port_of(server)
    target = Target(httpx.URL(f"http://pinned.invalid:{port}/echo"), ("127.0.0.1",))
    request = _Request("GET", {}, None)
    status, _, body, _ = asyncio.run(_exchange(target, request, 10_000))
    assert status == 200
    assert json.loads(body)["host"] == f"pinned.invalid:{port}"


def test_no_policy_or_mode_none_is_refused(server: str, context: MakeContext) -> None:
    """Without a policy, or with net.mode none, nothing is fetched."""
    with pytest.raises(HostRefusedError, match="needs a network policy"):
        fetch(context, None, f"{server}/text")
    with pytest.raises(HostRefusedError, match="network access is off"):
        fetch(context, NetRules(mode="none"), f"{server}/text")


def test_loopback_mode_refuses_other_addresses(context: MakeContext) -> None:
    """In loopback mode a non-loopback address is refused before connecting."""
    with pytest.raises(HostRefusedError, match="not a loopback address"):
        fetch(context, LOOPBACK, "http://192.0.2.1/")


def test_hosts_mode_needs_the_host_listed(server: str, context: MakeContext) -> None:
    """In hosts mode an unlisted host is refused, a listed one is fetched."""
    port = port_of(server)
    with pytest.raises(HostRefusedError, match="not an allowed host"):
        fetch(context, NetRules(mode="hosts", ports=(port,)), f"{server}/text")
    unlisted = NetRules(mode="hosts", hosts=("example.com",), ports=(port,))
    with pytest.raises(HostRefusedError, match=r"'127\.0\.0\.1' is not an allowed host"):
        fetch(context, unlisted, f"{server}/text")
    listed = NetRules(mode="hosts", hosts=("127.0.0.1",), ports=(port,))
    assert fetch(context, listed, f"{server}/text")["content"] == "hello"


def test_ports_outside_the_list_are_refused(server: str, context: MakeContext) -> None:
    """The port must be allowed: hosts mode defaults to 80 and 443, ports narrows."""
    with pytest.raises(HostRefusedError, match=f"port {port_of(server)} .* not allowed"):
        fetch(context, NetRules(mode="hosts", hosts=("127.0.0.1",)), f"{server}/text")
    with pytest.raises(HostRefusedError, match="not allowed"):
        fetch(context, NetRules(mode="loopback", ports=(1,)), f"{server}/text")


def test_redirects_are_followed_and_checked(server: str, context: MakeContext) -> None:
    """A redirect inside the policy is followed; one to an unlisted host is refused."""
    port = port_of(server)
    listed = NetRules(mode="hosts", hosts=("127.0.0.1",), ports=(port,))
    result = fetch(context, listed, f"{server}/redirect?to=/text")
    assert (result["url"], result["content"]) == (f"{server}/text", "hello")
    away = f"{server}/redirect?to=http://localhost:{port}/text"
    with pytest.raises(HostRefusedError, match="'localhost' is not an allowed host"):
        fetch(context, listed, away)


def test_see_other_turns_into_get(server: str, context: MakeContext) -> None:
    """A 303 after a POST fetches the new location with GET and no body."""
    result = fetch(
        context, LOOPBACK, f"{server}/redirect?status=303&to=/echo", method="POST", body="x"
    )
    assert json.loads(result["content"])["method"] == "GET"


def test_credentials_do_not_follow_to_another_origin(server: str, context: MakeContext) -> None:
    """Authorization is kept on the same origin and dropped for another."""
    port = port_of(server)
    same = fetch(context, LOOPBACK, f"{server}/redirect?to=/echo", headers={"Authorization": "k"})
    assert json.loads(same["content"])["auth"] == "k"
    other = f"{server}/redirect?to=http://localhost:{port}/echo"
    moved = fetch(context, LOOPBACK, other, headers={"Authorization": "k"})
    assert json.loads(moved["content"])["auth"] is None


def test_redirect_loop_ends(server: str, context: MakeContext) -> None:
    """More than 5 redirects is an error."""
    with pytest.raises(FetchError, match="more than 5 redirects"):
        fetch(context, LOOPBACK, f"{server}/loop")


def test_timeout(server: str, context: MakeContext) -> None:
    """A server that does not answer in time is a FetchTimeoutError."""
    with pytest.raises(FetchTimeoutError, match=r"no complete answer within 0\.3 s"):
        fetch(context, LOOPBACK, f"{server}/hang", timeout=0.3)


def test_connection_refused_is_a_fetch_error(context: MakeContext) -> None:
    """A port nobody listens on is a FetchError naming the URL."""
    with ThreadingHTTPServer(("127.0.0.1", 0), Handler) as closed:
        port = closed.server_address[1]
    with pytest.raises(FetchError, match=f"127.0.0.1:{port}"):
        fetch(context, LOOPBACK, f"http://127.0.0.1:{port}/")


def test_invalid_requests(server: str, context: MakeContext) -> None:
    """Other schemes and headers the tool sets itself are invalid arguments."""
    with pytest.raises(InvalidParamsError, match="only http and https"):
        fetch(context, LOOPBACK, "file:///etc/passwd")
    with pytest.raises(InvalidParamsError, match=r"set by http\.fetch"):
        fetch(context, LOOPBACK, f"{server}/text", headers={"Host": "example.com"})


def test_host_matching() -> None:
    """Hosts match exactly, by ``*.`` wildcard for subdomains only, or as the same IP."""
    rules = NetRules(mode="hosts", hosts=("*.example.com", "::1", "api.test"), ports=(81,))

    def refused_for(url: str) -> str:
        """Which check refused ``url``: its host, or (the host allowed) its port 80."""
        with pytest.raises(HostRefusedError) as caught:
            asyncio.run(check(rules, httpx.URL(url)))
        return "host" if "not an allowed host" in str(caught.value) else "port"

    assert refused_for("http://example.com/") == "host"
    assert refused_for("http://evil-example.com/") == "host"
    assert refused_for("http://api.test.evil/") == "host"
    assert refused_for("http://[::2]/") == "host"
    assert refused_for("http://a.b.example.com/") == "port"
    assert refused_for("http://[0:0::1]/") == "port"
    assert refused_for("http://API.test./") == "port"


def test_declared_policy() -> None:
    """http.fetch is declared in hosts mode with no host listed."""
    assert http_fetch.sandbox is not None
    assert http_fetch.sandbox.net.mode == "hosts"
    assert http_fetch.sandbox.net.hosts == ()
