"""Federation through failures: a NATS node killed mid-stream, a broker killed and
started again."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Proc, broker_stats, eventually, start_worker, until, wait_for
from federation_helpers import Cluster, federated, link_node, nats_cluster

from loom import Actor, Event, on
from loom.session import ToolClient

__all__ = ["nats_cluster"]  # the fixture, imported for pytest

pytestmark = pytest.mark.timeout(120)


class Numbers(Actor):
    """Keeps the numbers of every ``seq.*`` event it is given (copies included)."""

    def __init__(self, name: str, broker: str) -> None:
        super().__init__(name=name, broker=broker)
        self.got: list[Any] = []

    @on("seq.*")
    async def number(self, event: Event) -> None:
        self.got.append(event.data)


@pytest.mark.parametrize("side", ["publisher", "subscriber"])
def test_a_nats_node_killed_mid_stream_loses_and_repeats_nothing(
    spawn: Callable[..., Proc], nats_cluster: Cluster, side: str
) -> None:
    """A streams 1500 standard events to B, each link on its own node of the cluster
    (both know every node). The node under the publisher's link, or the subscriber's,
    is killed a third of the way in: B's handler still gets every event exactly once."""
    urls = nats_cluster.urls
    a, _ = federated(spawn, "A", urls)
    b, _ = federated(spawn, "B", urls)
    total = 1500

    async def body() -> None:
        sender = Actor(name="sender", broker=a)
        await sender.start()
        reader = Numbers("reader", b)
        await reader.start()
        try:

            async def warm() -> bool:
                await sender.emit("seq.warm", -1)
                await asyncio.sleep(0.05)
                return -1 in reader.got

            await eventually(warm, timeout=20)
            await asyncio.sleep(0.3)
            reader.got.clear()
            victim = link_node(nats_cluster, "A" if side == "publisher" else "B")
            for i in range(total):
                await sender.emit("seq.n", i)
                if i == total // 3:
                    nats_cluster.kill(victim)
                await asyncio.sleep(0.002)
            await until(lambda: len(set(reader.got)) >= total, timeout=30)
            await asyncio.sleep(1.0)  # copies still in flight would come now
            assert sorted(reader.got) == list(range(total))  # each once
        finally:
            await reader.stop()
            await sender.stop()

    asyncio.run(body())
    publisher = eventually_stats(a, lambda f: f["state"] == "up" and f["link"]["resent"] > 0)
    subscriber = eventually_stats(b, lambda f: f["state"] == "up")
    assert publisher["link"]["exported"] >= total
    assert subscriber["link"]["duplicates"] > 0  # copies came, and were dropped


def eventually_stats(broker: str, good: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The broker's ``federation`` stats once ``good`` holds of them (the link reports
    every second)."""
    return wait_for(lambda: (f := broker_stats(broker)["federation"]) and good(f) and f, 10)


def test_a_broker_killed_leaves_the_directory_and_comes_back(
    spawn: Callable[..., Proc], nats_cluster: Cluster
) -> None:
    """A serves sample.add; C lists it. A's broker is killed outright: its link goes
    with it (the kernel tells it), and C drops A's tools. A starts again at the same
    address: its worker reconnects by itself, and C lists and calls the tool again."""
    urls = nats_cluster.urls
    a, broker_a = federated(spawn, "A", urls)
    c, _ = federated(spawn, "C", urls)
    start_worker(spawn, a, "tools-a")

    async def served(client: ToolClient) -> bool:
        directory = await client.directory()
        return any(t.name == "sample.add" and t.brokers == ["A"] for t in directory.tools)

    async def gone(client: ToolClient) -> bool:
        return not await served(client)

    async def body(phase: str) -> None:
        async with await ToolClient.connect(c) as client:
            if phase == "before":
                await eventually(lambda: served(client), timeout=15)
            elif phase == "killed":
                await eventually(lambda: gone(client), timeout=15)
            else:
                await eventually(lambda: served(client), timeout=30)
                assert await client.call("sample.add", {"a": 40, "b": 2}) == 42

    asyncio.run(body("before"))
    broker_a.popen.send_signal(signal.SIGKILL)  # the broker alone, not its group
    broker_a.popen.wait(10)
    asyncio.run(body("killed"))
    federated(spawn, "A", urls, endpoint=a)
    asyncio.run(body("back"))
