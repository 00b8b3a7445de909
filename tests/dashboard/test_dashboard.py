"""`loom dashboard` and `loom-broker --dashboard-port`: the state a page draws, from a
real broker, worker and actors."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
from conftest import (
    Proc,
    free_tcp_endpoint,
    loom_at,
    spawn_actor,
    start_broker,
    start_worker,
    wait_for,
)
from dash import at, edges, node_ids, start_dashboard, state

from loom.keys import dashboard_token


def test_the_state_shows_peers_flows_threads_and_tool_calls(
    mesh: str, spawn: Callable[..., Proc]
) -> None:
    """After a request to an actor and two tool calls (one failing), the state has the
    actor (with its sampled handler latency), worker and tools, the flows between them,
    the request's thread (request, the echo's pong and reply in one lane), the calls
    with their outcome, and the cards."""
    start_worker(spawn, mesh, "w1")
    spawn_actor(spawn, "echo", mesh)
    _, url = start_dashboard(spawn, mesh)
    assert loom_at(mesh, "call", "sample.add", '{"a": 1, "b": 2}').returncode == 0
    assert loom_at(mesh, "call", "sample.boom", '{"message": "no"}').returncode == 1
    assert loom_at(mesh, "pub", "ping.dash", '{"n": 1}').returncode == 0

    def complete() -> dict[str, object] | None:
        current = state(url)
        calls = {(c["tool"], c["worker"], c["outcome"]) for c in current["calls"]}
        threads = [{e["topic"] for e in lane["events"]} for lane in current["threads"]]
        timed = {p["name"]: p.get("handler_ms") for p in current["topology"]["peers"]}
        expected = {("sample.add", "w1", "ok"), ("sample.boom", "w1", "TOOL_ERROR")}
        ready = (
            expected <= calls
            and {"ping.dash", "pong.dash"} in threads
            and timed.get("echo") is not None  # its first event's handling, sampled
        )
        return current if ready else None

    current = wait_for(complete, timeout=20, interval=0.1)
    assert current["connected"]
    echo = next(p for p in current["topology"]["peers"] if p["name"] == "echo")
    assert 0 < echo["handler_ms"]["p50"] <= echo["handler_ms"]["p99"]
    assert {"peer:echo", "tool:sample.add", "worker:w1", "topic:ping.dash"} <= node_ids(current)
    links = edges(current)
    assert ("topic:ping.dash", "delivers", "peer:echo") in links  # echo subscribes ping.*
    assert ("peer:echo", "publishes", "topic:pong.dash") in links
    assert ("peer:loom-pub", "publishes", "topic:ping.dash") in links
    assert ("tool:sample.add", "serves", "worker:w1") in links
    callers = {e["from"] for e in current["topology"]["edges"] if e["to"] == "tool:sample.boom"}
    assert len(callers) == 1  # loom call's client, counted with its failure
    boom = next(e for e in current["topology"]["edges"] if e["to"] == "tool:sample.boom")
    assert boom["errors"] == 1
    assert [c["tool"] for c in current["errors"]] == ["sample.boom"]
    cards = current["cards"]
    assert cards["calls"]["total"] >= 2 and cards["failures"]["total"] >= 1
    assert cards["latency"]["p50_ms"] > 0 and cards["latency"]["samples"] >= 2
    assert cards["peers"]["actors"] >= 1 and cards["peers"]["workers"] == 1
    assert cards["published"]["total"] >= 3


def test_the_dashboard_follows_a_broker_that_restarts(spawn: Callable[..., Proc]) -> None:
    """Broker gone: the state says disconnected and /healthz is 503; a new broker on the
    same address: connected again, and its calls (numbered from 0 again) are shown."""
    endpoint = free_tcp_endpoint()
    broker = start_broker(spawn, endpoint, "--heartbeat", "0.2")
    start_worker(spawn, endpoint, "w1")
    _, url = start_dashboard(spawn, endpoint)
    assert loom_at(endpoint, "call", "sample.add", '{"a": 1}').returncode == 0
    wait_for(lambda: len(state(url)["calls"]) == 1, timeout=20, interval=0.1)
    broker.kill()
    wait_for(lambda: not state(url)["connected"], timeout=20, interval=0.1)
    assert httpx.get(at(url, "healthz"), timeout=5).status_code == 503
    start_broker(spawn, endpoint, "--heartbeat", "0.2")
    wait_for(lambda: state(url)["connected"], timeout=20, interval=0.1)
    assert httpx.get(at(url, "healthz"), timeout=5).status_code == 200
    wait_for(lambda: "worker:w1" in node_ids(state(url)), timeout=20, interval=0.1)
    assert loom_at(endpoint, "call", "sample.add", '{"a": 2}').returncode == 0
    wait_for(lambda: len(state(url)["calls"]) == 2, timeout=20, interval=0.1)


def test_the_broker_serves_the_dashboard_itself(spawn: Callable[..., Proc]) -> None:
    """`loom-broker --dashboard-port` serves the page and the state of its own mesh, and
    still exits 0 on SIGTERM."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = free_tcp_endpoint().replace("127.0.0.1", "0.0.0.0")  # a wildcard bind
    broker = start_broker(spawn, endpoint, "--dashboard-port", str(port))
    url = f"http://127.0.0.1:{port}/?token={dashboard_token()}"
    assert url in broker.output  # printed with its token
    spawn_actor(spawn, "echo", endpoint.replace("0.0.0.0", "127.0.0.1"))
    wait_for(lambda: "peer:echo" in node_ids(state(url)), timeout=20, interval=0.1)
    page = httpx.get(url, timeout=5)
    assert page.status_code == 200 and "/static/app.js" in page.text
    cookies = page.cookies  # the page's later requests carry the token as a cookie
    base = url.partition("?")[0]
    assert httpx.get(base + "static/app.js", cookies=cookies, timeout=5).status_code == 200
    for path in ("", "api/state", "api/stream", "static/app.js"):
        assert httpx.get(base + path, timeout=5).status_code == 401, path
        assert httpx.get(f"{base}{path}?token=wrong", timeout=5).status_code == 401, path
    assert broker.stop() == 0, broker.output


def test_bad_flags_and_a_taken_port_exit_non_zero(spawn: Callable[..., Proc]) -> None:
    """A bad interval exits 2; a port in use exits 1 naming it; so does the broker's."""
    bad = loom_at(free_tcp_endpoint(), "dashboard", "--interval", "0")
    assert bad.returncode == 2 and "--interval" in bad.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        busy = loom_at(free_tcp_endpoint(), "dashboard", "--port", port)
        assert busy.returncode == 1 and port in busy.stderr
        broker = spawn(
            sys.executable, "-m", "loom.cli.broker", "--endpoint", free_tcp_endpoint(),
            "--dashboard-port", port,
        )  # fmt: skip
        assert broker.popen.wait(30) == 1


def test_the_assets_ship_in_the_package() -> None:
    """The page's files are inside the installed package, next to the server."""
    from loom.dashboard._server import STATIC

    assert {"index.html", "app.js", "style.css"} <= {p.name for p in Path(STATIC).iterdir()}
