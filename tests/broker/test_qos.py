"""Quality of service: realtime never blocks and counts its drops; background waits its
turn; a stopped subscriber under realtime traffic leaves the broker's memory bounded."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable

import psutil
import pytest
from conftest import Proc, broker_stats, spawn_actor, start_broker, until

from loom import Actor, Event, RequestTimeoutError


def test_background_events_all_arrive_after_the_rest(broker: str) -> None:
    """Background events are sent when the link has room; none is lost; standard events
    emitted after them are not held up behind them."""

    async def body() -> None:
        got: list[str] = []
        sink = Actor(name="sink", broker=broker)

        def keep(event: Event) -> None:
            got.append(event.topic)

        await sink.subscribe("q.*", keep)
        await sink.start()
        sender = Actor(name="sender", broker=broker)
        await sender.start()
        for i in range(2000):
            await sender.emit("q.bg", i, qos="background")
        await sender.emit("q.now", 0)
        await until(lambda: got.count("q.bg") == 2000 and "q.now" in got, timeout=10)
        assert got.index("q.now") < len(got) - 1  # it overtook queued background events
        assert sender.stats.dropped == {}
        await sender.stop()
        await sink.stop()

    asyncio.run(body())


def test_an_unknown_qos_is_refused(broker: str) -> None:
    """`emit(qos=...)` with an unknown class raises ValueError."""

    async def body() -> None:
        sender = Actor(name="sender", broker=broker)
        await sender.start()
        with pytest.raises(ValueError, match="qos must be"):
            await sender.emit("a.b", 1, qos="urgent")
        await sender.stop()

    asyncio.run(body())


@pytest.mark.timeout(60)
def test_a_stopped_subscriber_leaves_the_broker_bounded(
    spawn: Callable[..., Proc], endpoint: str
) -> None:
    """SIGSTOP a subscriber and flood its topic with realtime events for 3 s: the sender
    never blocks, drops are counted, the broker's memory stays bounded, and after SIGCONT
    the subscriber works again."""
    broker = start_broker(spawn, endpoint, "--stall-timeout", "0.1")
    sink = spawn_actor(spawn, "sink", endpoint)
    broker_rss = psutil.Process(broker.pid)

    async def body() -> None:
        sender = Actor(name="flooder", broker=endpoint)
        await sender.start()
        try:
            assert await sender.request("sink.count", timeout=5) == 0
            os.kill(sink.pid, signal.SIGSTOP)
            before = broker_rss.memory_info().rss
            sent, slowest = 0, 0.0
            end = time.monotonic() + 3.0
            payload = "x" * 512
            while time.monotonic() < end:
                for _ in range(200):
                    start = time.perf_counter()
                    await sender.emit("flood.x", payload, qos="realtime")
                    slowest = max(slowest, time.perf_counter() - start)
                    sent += 1
                await asyncio.sleep(0)
            grown = broker_rss.memory_info().rss - before
            os.kill(sink.pid, signal.SIGCONT)
            assert slowest < 0.05, f"a realtime emit blocked for {slowest:.3f}s"
            assert grown < 50 * 2**20, f"the broker grew by {grown / 2**20:.1f} MiB"
            dropped_here = sender.stats.dropped.get("flood.x", 0)
            stats = await asyncio.to_thread(broker_stats, endpoint)
            dropped_there = stats["topics"]["flood.x"]["dropped"]
            assert dropped_here + dropped_there > 0, (sent, stats["topics"]["flood.x"])
            handled = await alive_again(sender)
            assert 0 < handled < sent
        finally:
            await sender.stop()

    asyncio.run(body())
    assert broker.stop() == 0


async def alive_again(sender: Actor, timeout: float = 20.0) -> int:
    """Ask the resumed sink for its count until it answers: while it drains its backlog
    the broker may still be shedding, and a request can be among what it sheds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return int(await sender.request("sink.count", timeout=1.0))
        except RequestTimeoutError:
            assert time.monotonic() < deadline, "the sink did not come back"
