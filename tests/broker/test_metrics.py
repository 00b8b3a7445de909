"""The broker's Prometheus endpoint, scraped over HTTP from a real broker process."""

from __future__ import annotations

import asyncio
import re
import socket
import sys
from collections.abc import Callable

import httpx
import pytest
from clients.ready import curve
from conftest import HEARTBEAT, Proc, spawn_actor, start_broker, start_worker, wait_for
from prometheus_client.parser import text_string_to_metric_families

from loom import Actor, ToolClient
from loom.errors import ToolFailedError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, keyed by (name, sorted labels)."""
    text = httpx.get(url, timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_report_messages_peers_and_tool_calls(
    spawn: Callable[..., Proc], endpoint: str
) -> None:
    """After events and tool calls (one failing), /metrics shows them by topic family,
    by tool and outcome, with a latency histogram, the connected peers by role, and the
    actors' and workers' own counters (pushed with their heartbeats)."""
    port = free_port()
    broker = start_broker(
        spawn, endpoint, "--heartbeat", str(HEARTBEAT), "--metrics-port", str(port)
    )
    assert re.search(rf"metrics=http://127.0.0.1:{port}/metrics", "\n".join(broker.lines))
    start_worker(spawn, endpoint, "w1")
    spawn_actor(spawn, "echo", endpoint)

    async def traffic() -> None:
        actor = Actor(name="metered", broker=endpoint)
        await actor.start()
        try:
            for i in range(5):
                await actor.emit(f"orders.created.{i}", {"n": i})
            await actor.request("ping.a", {}, timeout=10)
        finally:
            await actor.stop()
        async with await ToolClient.connect(endpoint, name="caller") as client:
            for i in range(3):
                assert await client.call("sample.add", {"a": i, "b": 1}) == i + 1
            with pytest.raises(ToolFailedError):
                await client.call("sample.boom", {"message": "no"})

    asyncio.run(traffic())
    samples = scrape(f"http://127.0.0.1:{port}/metrics")
    assert samples[("loom_messages_published_total", (("family", "orders"),))] == 5
    assert samples[("loom_tool_calls_total", (("outcome", "ok"), ("tool", "sample.add")))] == 3
    failed = (("outcome", "TOOL_ERROR"), ("tool", "sample.boom"))
    assert samples[("loom_tool_calls_total", failed)] == 1
    count = samples[("loom_tool_call_duration_seconds_count", (("tool", "sample.add"),))]
    inf = samples[
        ("loom_tool_call_duration_seconds_bucket", (("le", "+Inf"), ("tool", "sample.add")))
    ]
    assert count == inf == 3
    assert samples[("loom_peers", (("role", "worker"),))] == 1
    assert samples[("loom_peers", (("role", "actor"),))] >= 1
    assert samples[("loom_tool_capacity", (("tool", "sample.add"),))] >= 1
    assert samples[("loom_subscriptions", ())] >= 1

    def pushed() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        """Actors and workers push their own counters with each heartbeat."""
        now = scrape(f"http://127.0.0.1:{port}/metrics")
        handled = now.get(("loom_actor_handled_total", (("actor", "echo"),)), 0)
        calls = now.get(("loom_worker_calls_total", (("worker", "w1"),)), 0)
        return now if handled >= 1 and calls >= 4 else None

    later = wait_for(pushed)
    assert later[("loom_worker_failed_total", (("worker", "w1"),))] == 1
    assert later[("loom_actor_mailbox", (("actor", "echo"),))] == 0
    # The echo's first event was timed (one in 16 is): its handler latency histogram.
    echo = (("actor", "echo"),)
    assert later[("loom_actor_handler_duration_seconds_count", echo)] >= 1
    assert later[("loom_actor_handler_duration_seconds_sum", echo)] > 0
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in later.items()
        if name == "loom_actor_handler_duration_seconds_bucket" and ("actor", "echo") in labels
    )
    counts = [value for _, value in buckets]
    assert (
        counts == sorted(counts)
        and counts[-1] == later[("loom_actor_handler_duration_seconds_count", echo)]
    )


def test_a_metrics_port_in_use_is_a_clear_error(spawn: Callable[..., Proc], endpoint: str) -> None:
    """A taken metrics port: the broker says so and exits 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = spawn(
            sys.executable,
            "-m",
            "loom.cli.broker",
            "--endpoint",
            endpoint,
            "--metrics-port",
            str(port),
        )
        assert proc.popen.wait(20) == 1
    assert "cannot bind" in "\n".join(proc.lines)


def test_hostile_peer_stats_cannot_break_the_metrics(
    spawn: Callable[..., Proc], endpoint: str
) -> None:
    """A raw peer that says HELLO as an actor, then heartbeats names of its own, NaN,
    negative numbers and a name that would collide (`handled_total`): only the known,
    finite, non-negative stats are shown, and the OpenMetrics output still parses."""
    import math

    import zmq
    from prometheus_client.openmetrics.parser import (
        text_string_to_metric_families as openmetrics_families,
    )

    from loom.protocol import (
        HANDLER_BUCKETS,
        HEARTBEAT,
        HELLO,
        VERSION,
        decode_control,
        encode_control,
    )

    port = free_port()
    start_broker(spawn, endpoint, "--metrics-port", str(port))
    context = zmq.Context()
    dealer = curve(context.socket(zmq.DEALER))
    dealer.setsockopt(zmq.RCVTIMEO, 10_000)
    dealer.connect(endpoint)
    try:
        hello = {"version": VERSION, "name": "raw", "role": "actor", "pid": 1, "rid": 1}
        dealer.send_multipart(encode_control(HELLO, hello))
        assert decode_control(dealer.recv_multipart())[0] == HELLO
        stats = {"handled": 3, "handled_total": 1, "é": 2, "errors": math.nan, "dropped": -1}
        latency = [0] * (len(HANDLER_BUCKETS) + 1) + [0.5]
        latency[3] = 2  # two events took up to the fourth bucket's bound
        for bad in ([1, 2], [math.nan] * len(latency), [-1] * len(latency), "x"):
            stats["handler_seconds"] = bad
            dealer.send_multipart(encode_control(HEARTBEAT, {"stats": stats}))
            assert decode_control(dealer.recv_multipart())[0] == HEARTBEAT
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            assert 'loom_actor_handler_duration_seconds_count{actor="raw"}' not in text
        stats["handler_seconds"] = latency
        dealer.send_multipart(encode_control(HEARTBEAT, {"stats": stats}))
        assert decode_control(dealer.recv_multipart())[0] == HEARTBEAT
        url = f"http://127.0.0.1:{port}/metrics"
        accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
        text = httpx.get(url, headers=accept, timeout=10).text
        families = {f.name: f for f in openmetrics_families(text)}  # raises if malformed
        handled = families["loom_actor_handled"].samples
        assert [(s.labels, s.value) for s in handled if s.name.endswith("_total")] == [
            ({"actor": "raw"}, 3.0)
        ]
        assert not [s for s in families["loom_actor_errors"].samples if s.name.endswith("_total")]
        timed = {
            (s.name, s.labels.get("le")): s.value
            for s in families["loom_actor_handler_duration_seconds"].samples
        }
        bound = str(HANDLER_BUCKETS[3])
        assert timed[("loom_actor_handler_duration_seconds_bucket", bound)] == 2
        assert timed[("loom_actor_handler_duration_seconds_count", None)] == 2
        assert timed[("loom_actor_handler_duration_seconds_sum", None)] == 0.5
    finally:
        dealer.close(linger=0)
        context.term()
