"""The broker holds no more memory than its limits say, whatever peers send it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import psutil
import zmq
from clients.ready import curve, publisher
from conftest import Proc, broker_stats, make_header, start_broker, start_worker, until, wait_for

from loom import Actor, ToolClient
from loom.errors import OverloadedError
from loom.protocol import CALL, FAIL, HELLO, VERSION

MiB = 1 << 20


def rss(proc: Proc) -> int:
    return int(psutil.Process(proc.pid).memory_info().rss)


def hello(endpoint: str) -> dict[str, Any]:
    with zmq.Context() as ctx, curve(ctx.socket(zmq.DEALER)) as sock:
        sock.linger = 0
        sock.connect(endpoint)
        sock.send_multipart([HELLO, msgpack.packb({"version": VERSION, "name": "probe"})])
        assert sock.poll(5000), "no answer to HELLO"
        command, body = sock.recv_multipart()
        assert command == HELLO
        return dict(msgpack.unpackb(body))


def test_frames_over_the_limit_are_refused_by_libzmq(
    spawn: Callable[..., Proc], short_tmp: Path
) -> None:
    """A 32 MiB frame on the control or publish socket never reaches Python: libzmq
    disconnects the sender on reading the frame's size, the broker does not grow by it,
    and it keeps serving."""
    endpoint = f"ipc://{short_tmp}/b"
    broker = start_broker(spawn, endpoint)
    announced = hello(endpoint)
    before = rss(broker)
    huge = b"x" * (32 * MiB)
    with zmq.Context() as ctx:
        for _ in range(3):
            dealer = curve(ctx.socket(zmq.DEALER))
            dealer.connect(endpoint)
            for sock in (dealer, publisher(ctx, announced["pub"])):
                with sock:
                    sock.linger = 2000
                    sock.send_multipart([b"big.topic", msgpack.packb([1]), huge])
    # Ending the context waited (linger) until each frame was refused (the broker hung
    # up on reading its size) or taken whole, which the memory check below would see.
    assert hello(endpoint)["version"] == VERSION
    assert rss(broker) - before < 16 * MiB
    assert "big.topic" not in broker_stats(endpoint)["topics"]


def test_a_call_trace_is_bounded(spawn: Callable[..., Proc], short_tmp: Path) -> None:
    """A CALL whose trace id is over 64 bytes is answered MALFORMED (the broker keeps a
    call's trace with every answered call)."""
    endpoint = f"ipc://{short_tmp}/b"
    start_broker(spawn, endpoint)
    with zmq.Context() as ctx, curve(ctx.socket(zmq.DEALER)) as sock:
        sock.linger = 0
        sock.connect(endpoint)
        meta = msgpack.packb([7, "any.tool", None, b"t" * (1 * MiB)])
        sock.send_multipart([CALL, meta, msgpack.packb({})])
        assert sock.poll(5000)
        command, ref, body = sock.recv_multipart()
    assert command == FAIL and msgpack.unpackb(ref) == [7]
    assert msgpack.unpackb(body)["code"] == "MALFORMED"


def test_a_peers_patterns_are_kept_up_to_a_byte_bound(
    spawn: Callable[..., Proc], short_tmp: Path
) -> None:
    """HELLO with a thousand 1000-byte patterns: the directory keeps 8 KiB of them."""
    endpoint = f"ipc://{short_tmp}/b"
    start_broker(spawn, endpoint)
    patterns = [f"p{i:03}." + "x" * 995 for i in range(1000)]
    with zmq.Context() as ctx, curve(ctx.socket(zmq.DEALER)) as sock:
        sock.linger = 0
        sock.connect(endpoint)
        body = {"version": VERSION, "name": "greedy", "role": "actor", "patterns": patterns}
        sock.send_multipart([HELLO, msgpack.packb(body)])
        assert sock.poll(5000)
        assert sock.recv_multipart()[0] == HELLO
        peers = broker_stats(endpoint)["peers"]
    kept = next(p for p in peers if p["name"] == "greedy")["patterns"]
    assert kept == patterns[: len(kept)] and 0 < sum(map(len, kept)) <= 8 * 1024


def test_a_subscriber_that_never_reads_holds_a_bounded_queue(
    spawn: Callable[..., Proc], short_tmp: Path
) -> None:
    """A subscriber that stops reading while 300 events of 256 KB pass (75 MB) costs the
    broker about --queue-bytes, not the 75 MB: past that its queue is full, the broker
    sheds, and the messages at risk are counted as dropped."""
    endpoint = f"ipc://{short_tmp}/b"
    broker = start_broker(spawn, endpoint, "--queue-bytes", str(8 * MiB), "--stall-timeout", "0.05")
    announced = hello(endpoint)
    with zmq.Context() as ctx, curve(ctx.socket(zmq.SUB)) as stalled:
        stalled.rcvhwm = 2
        stalled.rcvbuf = 4096
        stalled.connect(announced["sub"])
        stalled.subscribe(b"big")
        before = rss(broker)

        async def publish() -> None:
            actor = Actor(name="big", broker=endpoint)
            await actor.start()
            for i in range(300):
                await actor.emit("big.event", [i, b"x" * 256_000], qos="realtime")
                await asyncio.sleep(0.002)
            await actor.stop()

        asyncio.run(publish())
        grown = rss(broker) - before
        stats = broker_stats(endpoint)
    assert grown < 40 * MiB, grown
    assert stats["topics"]["big.event"]["dropped"] > 0
    assert stats["drops"]["stalled"] > 0


def test_calls_arguments_held_are_bounded(spawn: Callable[..., Proc], short_tmp: Path) -> None:
    """Past --max-call-bytes of arguments held (here: queued behind a busy worker), new
    calls are answered OVERLOADED at once."""
    endpoint = f"ipc://{short_tmp}/b"
    start_broker(spawn, endpoint, "--max-call-bytes", str(1 * MiB))
    start_worker(spawn, endpoint, "w")

    marker = str(short_tmp / "marker")

    async def body() -> list[BaseException | Any]:
        async with await ToolClient.connect(endpoint) as client:
            hold = {"marker": marker, "seconds": 2}
            slow = asyncio.ensure_future(client.call("sample.hold_idempotent", hold))
            await until(lambda: Path(marker).exists())  # the worker is busy with it
            big = {"marker": marker, "seconds": 0, "pad": "y" * 300_000}  # queued behind
            calls = [client.call("sample.hold_idempotent", big) for _ in range(6)]
            results = await asyncio.gather(*calls, return_exceptions=True)
            await slow
            return results

    results = asyncio.run(body())
    overloaded = [r for r in results if isinstance(r, OverloadedError)]
    assert 0 < len(overloaded) < 6, results
    wait_for(lambda: broker_stats(endpoint)["tool_calls"]["calls"] >= 7)


def test_the_brokers_answers_fit_in_one_frame(spawn: Callable[..., Proc], short_tmp: Path) -> None:
    """STATS lists the busiest topics that fit in one frame of the broker's limit (and
    says how many it left out), so a peer that asks and never reads holds no more than
    its queue's bound; scans (TRACE, REPLAY) are rate-limited with BUSY."""
    endpoint = f"ipc://{short_tmp}/b"
    start_broker(spawn, endpoint, "--max-payload", "100000")
    announced = hello(endpoint)
    with zmq.Context() as ctx, publisher(ctx, announced["pub"]) as pub:
        for i in range(600):
            topic = f"t{i:04}.".encode() + b"x" * 900
            pub.send_multipart([topic, make_header(), msgpack.packb(1)])
        wait_for(lambda: broker_stats(endpoint)["totals"]["published"] >= 600)
    with zmq.Context() as ctx, curve(ctx.socket(zmq.DEALER)) as sock:
        sock.linger = 0
        sock.connect(endpoint)
        sock.send_multipart([b"STATS", msgpack.packb({"rid": 1})])
        assert sock.poll(5000)
        command, body = sock.recv_multipart()
        assert command == b"STATS" and len(body) <= 100_000 + 64 * 1024
        stats = msgpack.unpackb(body)
        assert stats["topics_omitted"] > 0 and len(stats["topics"]) + stats["topics_omitted"] >= 600
        for rid in range(60):
            sock.send_multipart([b"TRACE", msgpack.packb({"trace": "00ff", "rid": rid})])
        answers = []
        while len(answers) < 60:
            assert sock.poll(5000)
            answers.append(msgpack.unpackb(sock.recv_multipart()[1]))
    busy = [a for a in answers if a.get("code") == "BUSY"]
    assert 0 < len(busy) < 60


def test_a_subscription_as_long_as_a_topic_does_not_deafen_its_socket(
    spawn: Callable[..., Proc], short_tmp: Path
) -> None:
    """A 1020-byte prefix is a valid subscription: the broker's frame limit leaves room
    for ZMTP 3.1's SUBSCRIBE command, so the socket keeps its other subscriptions."""
    endpoint = f"ipc://{short_tmp}/b"
    start_broker(spawn, endpoint)

    async def body() -> list[Any]:
        got: list[Any] = []
        listener = Actor(name="listener", broker=endpoint)
        await listener.subscribe("long." + "x" * 1015, got.append)
        await listener.subscribe("orders.*", got.append)
        await listener.start()
        sender = Actor(name="sender", broker=endpoint)
        await sender.start()
        for i in range(5):
            await sender.emit("orders.new", i)
        await sender.stop()
        deadline = time.monotonic() + 10
        while len(got) < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await listener.stop()
        return [event.data for event in got]

    assert asyncio.run(body()) == [0, 1, 2, 3, 4]


def test_deep_nesting_is_malformed_not_a_crash(spawn: Callable[..., Proc], short_tmp: Path) -> None:
    """A body nested deeper than the interpreter's stack is answered MALFORMED."""
    endpoint = f"ipc://{short_tmp}/b"
    start_broker(spawn, endpoint)
    nested = b"\x91" * 100_000 + b"\xc0"  # [[[[...nil...]]]]
    body = b"\x82\xa3rid\x05\xa5stats" + b"\x81\xa1a" + nested
    with zmq.Context() as ctx, curve(ctx.socket(zmq.DEALER)) as sock:
        sock.linger = 0
        sock.connect(endpoint)
        sock.send_multipart([b"HEARTBEAT", body])
        assert sock.poll(5000)
        command, answer = sock.recv_multipart()
    assert command == b"ERROR" and msgpack.unpackb(answer)["code"] == "MALFORMED"
    assert "error" not in broker_stats(endpoint)["control_drops"]
