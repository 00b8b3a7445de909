"""Federation through failures: a NATS node killed mid-stream, a broker killed and
started again."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Proc, broker_stats, eventually, start_worker, until, wait_for
from federation_helpers import (
    Cluster,
    federated,
    link_node,
    nats_cluster,
    nats_node,
    settled,
    until_heard,
)

from loom import Actor, Event, on
from loom.session import ToolClient

__all__ = ["nats_cluster", "nats_node"]  # the fixtures, imported for pytest

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
            await until_heard(lambda: sender.emit("seq.warm", -1), lambda: -1 in reader.got)
            await settled(lambda: len(reader.got), quiet=0.3)
            reader.got.clear()
            victim = link_node(nats_cluster, "A" if side == "publisher" else "B")
            for i in range(total):
                await sender.emit("seq.n", i)
                if i == total // 3:
                    nats_cluster.kill(victim)
                await asyncio.sleep(0.002)
            await until(lambda: len(set(reader.got)) >= total, timeout=30)
            await settled(lambda: len(reader.got), quiet=1.0)  # copies in flight come now
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


class Watcher(Actor):
    """Keeps ``$sys.federation.*`` events and ``out.*`` events."""

    def __init__(self, name: str, broker: str) -> None:
        super().__init__(name=name, broker=broker)
        self.states: list[str] = []
        self.got: list[tuple[str, Any]] = []

    @on("$sys.federation.*")
    async def state(self, event: Event) -> None:
        self.states.append(event.topic.rpartition(".")[2])

    @on("out.*")
    async def out(self, event: Event) -> None:
        self.got.append((event.topic, event.data))


def test_losing_nats_leaves_each_broker_local_and_keeps_a_bounded_backlog(
    spawn: Callable[..., Proc], nats_node: Cluster, tmp_path: Path
) -> None:
    """The only NATS server dies: each broker says ``$sys.federation.down`` and goes on
    locally. Meanwhile A's realtime events are dropped, its standard ones kept up to the
    bound (5), its reliable ones kept. NATS returns: ``$sys.federation.up``, and B gets
    what was kept, once, and nothing else."""
    config = tmp_path / "loom.toml"
    config.write_text('[federation]\nrealtime = ["out.tick"]\nbacklog_messages = 5\n')
    node = nats_node.nodes[0]
    extra = ["--config", str(config), "--data-dir", str(tmp_path / "data")]
    a, _ = federated(spawn, "A", node.url, *extra)
    b, _ = federated(spawn, "B", node.url)

    async def body() -> None:
        local = Watcher("local", a)
        remote = Watcher("remote", b)
        for actor in (local, remote):
            await actor.start()
        try:
            await until_heard(lambda: local.emit("out.warm", 0), lambda: bool(remote.got))
            await settled(lambda: len(remote.got), quiet=0.3)
            remote.got.clear()
            local.got.clear()
            nats_cluster_kill(nats_node)
            await until(lambda: "down" in local.states and "down" in remote.states, 10)
            for n in range(3):
                await local.emit("out.tick", n, qos="realtime")
            for n in range(10):
                await local.emit("out.std", n)
            for n in range(3):
                await local.emit("out.rel", n, qos="reliable")
            await until(lambda: len(local.got) == 16, 10)  # local delivery goes on
            nats_node.start(node)
            await until(lambda: local.states[-1:] == ["up"] == remote.states[-1:], 20)
            await until(lambda: len(remote.got) >= 8, 20)
            await settled(lambda: len(remote.got), quiet=1.0)  # anything more comes now
            kept = [("out.std", n) for n in range(5)] + [("out.rel", n) for n in range(3)]
            assert sorted(remote.got) == sorted(kept)
        finally:
            for actor in (local, remote):
                await actor.stop()

    asyncio.run(body())
    link = wait_for(lambda: (f := broker_stats(a)["federation"]) and f["link"], 5)
    assert link["dropped"] >= 8  # 3 realtime, 5 over the bound


def nats_cluster_kill(cluster: Cluster) -> None:
    for node in cluster.nodes:
        cluster.kill(node)
