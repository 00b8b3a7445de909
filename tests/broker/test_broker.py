"""The broker process: lifecycle, control plane, and bad input it must survive."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import zmq
from clients.ready import curve
from conftest import (
    Proc,
    broker_stats,
    free_tcp_endpoint,
    ill_typed_headers,
    make_header,
    spawn_actor,
    start_broker,
    wait_for,
)

from loom import Actor, Event
from loom.protocol import VERSION

HELLO = b"HELLO"


def control(endpoint: str, *frames: bytes, timeout: float = 5.0) -> list[bytes]:
    """Send raw frames to the control ROUTER and return the answer's frames."""
    with zmq.Context() as ctx, curve(ctx.socket(zmq.DEALER)) as dealer:
        dealer.linger = 0
        dealer.connect(endpoint)
        dealer.send_multipart(list(frames))
        assert dealer.poll(int(timeout * 1000)), "no answer from the broker"
        return dealer.recv_multipart()


def hello(endpoint: str, **body: Any) -> tuple[bytes, dict[str, Any]]:
    command, reply = control(endpoint, HELLO, msgpack.packb({"version": VERSION, **body}))
    return command, msgpack.unpackb(reply)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_broker_prints_ready_and_exits_zero_on_signal(
    spawn: Callable[..., Proc], endpoint: str, sig: int
) -> None:
    """`loom-broker` says ready, answers HELLO, and exits 0 on SIGTERM and SIGINT."""
    proc = start_broker(spawn, endpoint)
    command, reply = hello(endpoint, name="t")
    assert command == HELLO
    assert reply["version"] == VERSION and reply["pub"] and reply["sub"]
    assert proc.stop(sig) == 0
    assert "broker stopped" in proc.output


def test_broker_json_logs(spawn: Callable[..., Proc], short_tmp: Any) -> None:
    """With --log-json every line is a JSON object and one of them says ready."""
    import json

    proc = start_broker(spawn, f"ipc://{short_tmp}/b", "--log-json")
    assert proc.stop() == 0
    records = [json.loads(line) for line in proc.lines]
    assert any(r["event"] == "broker ready" for r in records)


def test_broker_endpoint_from_environment(spawn: Callable[..., Proc]) -> None:
    """Without --endpoint the broker binds $LOOM_BROKER."""
    endpoint = free_tcp_endpoint()
    proc = spawn(sys.executable, "-m", "loom.cli.broker", env={"LOOM_BROKER": endpoint})
    proc.wait_line("broker ready")
    assert hello(endpoint)[0] == HELLO
    assert proc.stop() == 0


def test_broker_in_use_address_is_a_clear_error(spawn: Callable[..., Proc]) -> None:
    """A second broker on a taken TCP address exits 1 saying why."""
    endpoint = free_tcp_endpoint()
    first = start_broker(spawn, endpoint)
    second = spawn(sys.executable, "-m", "loom.cli.broker", "--endpoint", endpoint)
    assert second.popen.wait(10) == 1
    assert "cannot bind" in second.output
    assert first.stop() == 0


def test_hello_with_another_version_is_refused(broker: str) -> None:
    """HELLO with an unknown protocol version gets ERROR VERSION_MISMATCH."""
    command, reply = control(broker, HELLO, msgpack.packb({"version": 99}))
    body = msgpack.unpackb(reply)
    assert command == b"ERROR"
    assert body["code"] == "VERSION_MISMATCH" and body["version"] == VERSION


def test_bad_control_messages_get_errors_and_the_broker_keeps_serving(broker: str) -> None:
    """Malformed or unknown control commands are answered with an error code."""
    assert control(broker, b"HELLO")[0] == b"ERROR"  # one frame
    unknown = msgpack.unpackb(control(broker, b"NOPE", msgpack.packb({"rid": 7}))[1])
    assert unknown["rid"] == 7  # errors echo the request id
    assert msgpack.unpackb(control(broker, b"HELLO", b"\xc1")[1])["code"] == "MALFORMED"
    assert msgpack.unpackb(control(broker, b"NOPE", msgpack.packb({}))[1])["code"] == (
        "UNKNOWN_COMMAND"
    )
    assert hello(broker)[0] == HELLO
    drops = broker_stats(broker)["control_drops"]
    assert drops["frames"] == 1 and drops["body"] == 1 and drops["command"] == 2


def test_counts_per_topic(broker: str) -> None:
    """STATS counts published and forwarded messages per topic."""

    async def body() -> None:
        actor = Actor(name="counter", broker=broker)
        await actor.start()
        for _ in range(5):
            await actor.emit("count.me", 1)
        await actor.emit("count.too", 1)
        await actor.stop()

    asyncio.run(body())
    topics = wait_for(
        lambda: (
            (t := broker_stats(broker)["topics"]).get("count.me", {}).get("forwarded") == 5 and t
        )
    )
    assert topics["count.me"] == {"published": 5, "forwarded": 5, "dropped": 0, "malformed": 0}
    assert topics["count.too"]["published"] == 1


def test_malformed_frames_are_dropped_counted_and_survived(
    spawn: Callable[..., Proc], short_tmp: Any
) -> None:
    """Raw garbage on the publish socket is dropped and counted per reason; the broker and
    an actor behind it keep serving; the drops are logged."""
    endpoint = f"ipc://{short_tmp}/b"
    broker = start_broker(spawn, endpoint, "--max-payload", "1000")
    echo = spawn_actor(spawn, "echo", endpoint)
    _, info = hello(endpoint)
    with zmq.Context() as ctx, curve(ctx.socket(zmq.PUB)) as raw:
        raw.linger = 1000
        raw.connect(info["pub"])
        wait_for(lambda: raw.poll(10, zmq.POLLOUT) and _delivered(raw, endpoint), timeout=10)
        good = make_header()
        bad_messages = [
            [b"ping.x"],  # one frame
            [b"ping.x", good],  # two frames
            [b"ping.x", good, msgpack.packb(1), b"extra"],  # four frames
            [b"ping.x", b"\xc1\xc1", msgpack.packb(1)],  # header not msgpack
            [b"ping.x", msgpack.packb([1, 2]), msgpack.packb(1)],  # header too short
            [b"ping.x", make_header(version=7), msgpack.packb(1)],  # unknown version
            [b"ping.x", make_header(deadline="soon"), msgpack.packb(1)],  # deadline not a number
            [b"\xff\xfeping", good, msgpack.packb(1)],  # topic not UTF-8
            [b"ping.x", good, b"x" * 5000],  # over --max-payload
        ]
        for frames in bad_messages:
            raw.send_multipart(frames)
        raw.send_multipart([b"ping.x", good, b"\xc1"])  # passes the broker, fails the actor
        drops = wait_for(
            lambda: (d := broker_stats(endpoint)["drops"]) and sum(d.values()) >= 9 and d
        )
    assert drops == {"frames": 3, "header": 3, "version": 1, "topic": 1, "oversized": 1}
    totals = broker_stats(endpoint)["totals"]
    assert totals["malformed"] == 8 and totals["dropped"] == 1

    async def still_serving() -> Any:
        client = Actor(name="client", broker=endpoint)
        await client.start()
        try:
            return (
                await client.request("ping.ok", 1, timeout=5),
                await client.request("echo.stats", timeout=5),
            )
        finally:
            await client.stop()

    reply, echo_stats = asyncio.run(still_serving())
    assert reply["ok"] is True
    assert echo_stats["drops"] == {"payload": 1}
    broker.wait_line("reason=frames")
    assert "message dropped" in broker.output
    echo.wait_line("reason=payload")


def test_ill_typed_headers_are_dropped_not_forwarded(
    spawn: Callable[..., Proc], short_tmp: Any
) -> None:
    """The broker checks every header field's type and bound (and the header's size), so
    it never forwards a message no Loom peer can read: an actor behind it sees none of
    them, and handles the good event that follows."""
    endpoint = f"ipc://{short_tmp}/b"
    start_broker(spawn, endpoint)
    spawn_actor(spawn, "echo", endpoint)
    padded = [*msgpack.unpackb(make_header()), "appended" * 1200]  # extra fields: 9.6 KB
    bad_headers = [*ill_typed_headers(), msgpack.packb(padded)]
    _, info = hello(endpoint)
    with zmq.Context() as ctx, curve(ctx.socket(zmq.PUB)) as raw:
        raw.linger = 1000
        raw.connect(info["pub"])
        wait_for(lambda: raw.poll(10, zmq.POLLOUT) and _delivered(raw, endpoint), timeout=10)
        for header in bad_headers:
            raw.send_multipart([b"ping.bad", header, msgpack.packb(1)])
        raw.send_multipart([b"ping.good", make_header(), msgpack.packb("fine")])
        wait_for(lambda: broker_stats(endpoint)["topics"].get("ping.good"))

    async def echo_stats() -> Any:
        client = Actor(name="client", broker=endpoint)
        await client.start()
        try:
            return await client.request("echo.stats", timeout=5)
        finally:
            await client.stop()

    stats = asyncio.run(echo_stats())
    assert stats == {"handled": 1, "errors": 0, "drops": {}}
    topics = broker_stats(endpoint)["topics"]
    assert topics["ping.bad"]["malformed"] == len(bad_headers)
    assert topics["ping.bad"]["forwarded"] == 0


def _delivered(raw: zmq.Socket[bytes], endpoint: str) -> bool:
    """Whether a probe from a raw publisher reaches the broker yet (subscribe-all arrived)."""
    raw.send_multipart([b"probe.raw", make_header(), msgpack.packb(None)])
    return bool(broker_stats(endpoint)["topics"].get("probe.raw"))


def test_stalled_subscriber_is_shed_and_counted(spawn: Callable[..., Proc], short_tmp: Any) -> None:
    """A subscriber that stops reading does not hold up the others, which keep up and get
    everything; messages forwarded while it is stalled are counted as dropped (a lower
    bound of what it missed: libzmq's XPUB reports no per-subscriber loss)."""
    endpoint = f"ipc://{short_tmp}/b"
    start_broker(spawn, endpoint, "--stall-timeout", "0.2")
    _, info = hello(endpoint)
    with zmq.Context() as ctx, curve(ctx.socket(zmq.SUB)) as stalled:
        stalled.rcvhwm = 100
        stalled.rcvbuf = 4096  # small kernel buffer: the stall comes early and surely
        stalled.connect(info["sub"])
        stalled.subscribe(b"flood")

        async def body() -> int:
            got = 0

            def count(event: Event) -> None:
                nonlocal got
                got += 1

            listener, sender = (
                Actor(name="listener", broker=endpoint),
                Actor(name="s", broker=endpoint),
            )
            await listener.subscribe("flood.*", count)
            await listener.start()
            await sender.start()
            deadline = time.monotonic() + 30
            for i in range(3000):
                await sender.emit("flood.x", [i, "x" * 1000])
                while got < i - 50 and time.monotonic() < deadline:  # the listener keeps up
                    await asyncio.sleep(0.001)
            while got < 3000 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await sender.stop()
            await listener.stop()
            return got

        got = asyncio.run(body())
        missed = 3000
        while stalled.poll(100):
            if stalled.recv_multipart()[0] == b"flood.x":
                missed -= 1
    assert got == 3000
    stats = broker_stats(endpoint)
    shed = stats["topics"]["flood.x"]["dropped"]
    assert stats["drops"]["stalled"] >= shed
    assert 0 < shed <= missed < 3000, (shed, missed)
