"""Threads: a conversation's id carried by every message of it (handlers' emits inherit
it), a broadcast topic per thread, and `loom trace --thread` showing it as one lane."""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest
from conftest import LOOM, free_tcp_endpoint, until

from loom import Actor, Event

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def endpoint() -> str:
    return free_tcp_endpoint()


def test_a_thread_is_one_lane_across_traces(mesh: str) -> None:
    """An order starts a thread; the pricing actor's reaction inherits it; a later
    message on the thread's broadcast topic (another trace) joins it. `loom trace
    --thread` lists all three in time order; subscribers of `thread.<id>` get the
    broadcast."""

    async def go() -> list[Event]:
        heard: list[Event] = []
        pricer = Actor(name="pricer", broker=mesh)

        async def price(event: Event) -> None:
            await pricer.emit("order.priced", {"total": 12})

        await pricer.subscribe("order.new", price)
        await pricer.subscribe("thread.order-1042", heard.append)
        await pricer.start()
        clerk = Actor(name="clerk", broker=mesh)
        await clerk.subscribe("order.priced", heard.append)
        await clerk.start()
        try:
            await clerk.emit("order.new", {"item": "tea"}, thread="order-1042")
            await until(lambda: any(e.topic == "order.priced" for e in heard))
            await clerk.emit_thread("order-1042", {"note": "gift wrap"})
            await until(lambda: any(e.topic == "thread.order-1042" for e in heard))
            with pytest.raises(ValueError):
                await clerk.emit_thread("not one.token")
        finally:
            await clerk.stop()
            await pricer.stop()
        return heard

    heard = asyncio.run(go())
    assert {e.envelope.thread_id for e in heard} == {"order-1042"}
    found = subprocess.run(
        [*LOOM, "trace", "--thread", "order-1042", "--json", "--broker", mesh],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert found.returncode == 0, found.stderr
    lane = json.loads(found.stdout)["messages"]
    topics = [m["topic"] for m in sorted(lane, key=lambda m: m["time"])]
    assert topics == ["order.new", "order.priced", "thread.order-1042"]
    assert len({m["trace"] for m in lane}) == 2  # two traces, one thread
    text = subprocess.run(
        [*LOOM, "trace", "--thread", "order-1042", "--broker", mesh],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert text.stdout.startswith("thread order-1042") and "order.priced" in text.stdout
    missing = subprocess.run(
        [*LOOM, "trace", "--thread", "nobody", "--broker", mesh],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert missing.returncode == 1
    neither = subprocess.run(
        [*LOOM, "trace", "--broker", mesh], capture_output=True, text=True, timeout=30, check=False
    )
    assert neither.returncode == 2
