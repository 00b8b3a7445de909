"""Events across brokers federated through a real 3-node NATS cluster: once each on
every broker with interest, never echoed back, following subscriptions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    Proc,
    broker_stats,
    eventually,
    free_tcp_endpoint,
    start_worker,
    until,
    wait_for,
)
from federation_helpers import (
    NATS_SERVER,
    Cluster,
    federated,
    link_subjects,
    nats_cluster,
    nats_node,
    settled,
    until_heard,
)

from loom import Actor, Event, RequestTimeoutError, on
from loom.session import ToolClient

__all__ = ["nats_cluster", "nats_node"]  # the fixtures, imported for pytest

pytestmark = pytest.mark.timeout(120)


class Recorder(Actor):
    """Keeps every ``fed.*`` event it gets, with the origin identity and sender."""

    def __init__(self, name: str, broker: str) -> None:
        super().__init__(name=name, broker=broker)
        self.got: list[tuple[str, Any, str | None, str]] = []

    @on("fed.*")
    async def record(self, event: Event) -> None:
        env = event.envelope
        self.got.append((event.topic, event.data, env.origin, env.sender))


def test_events_reach_every_broker_once_and_never_echo(
    spawn: Callable[..., Proc], nats_cluster: Cluster
) -> None:
    """Each of three brokers is on its own NATS node; an actor on each publishes and
    listens: everyone gets every other broker's events exactly once, and its own too
    (locally), never a second copy come back through NATS."""
    brokers = {
        name: federated(spawn, name, node.url)[0]
        for name, node in zip("ABC", nats_cluster.nodes, strict=True)
    }

    async def body() -> None:
        actors = {name: Recorder(f"rec-{name}", ep) for name, ep in brokers.items()}
        for actor in actors.values():
            await actor.start()
        try:
            await warm_up(actors)
            for name, actor in actors.items():
                for i in range(20):
                    await actor.emit(f"fed.{name}", i)
            await until(lambda: all(len(a.got) >= 60 for a in actors.values()), timeout=20)
            for actor in actors.values():  # nothing more comes: no copy, no echo
                assert await settled(lambda a=actor: len(a.got)) == 60
                by_topic = {t: [d for tt, d, _, _ in actor.got if tt == t] for t in ("fed.A",)}
                assert by_topic["fed.A"] == list(range(20))  # in order, once each
                assert {o for _, _, o, _ in actor.got} == {"local"}  # the origin crossed
        finally:
            for actor in actors.values():
                await actor.stop()

    asyncio.run(body())
    for name, endpoint in brokers.items():
        federation = broker_stats(endpoint)["federation"]
        assert federation["state"] == "up"
        assert federation["refused"] == 0, (name, federation)


async def warm_up(actors: dict[str, Recorder]) -> None:
    """Until each actor has heard every broker (its own included): every link then holds
    its NATS subscriptions, across the cluster. Then forget what was heard."""

    async def hello() -> None:
        for name, actor in actors.items():
            await actor.emit("fed.hello", name)

    def heard_all() -> bool:
        return all(
            {d for t, d, _, _ in a.got if t == "fed.hello"} >= set(actors) for a in actors.values()
        )

    await until_heard(hello, heard_all)
    await settled(lambda: sum(len(a.got) for a in actors.values()), quiet=0.3)
    for actor in actors.values():
        actor.got.clear()


def test_a_link_subscribes_in_nats_to_what_its_peers_read(
    spawn: Callable[..., Proc], nats_cluster: Cluster
) -> None:
    """No one reads ``fed.*`` on C: its link holds no event subject in NATS. An actor
    subscribes there: the link follows (``loom.ev.fed.>``) and A's events arrive; the
    actor leaves: the link lets the subject go."""
    a, _ = federated(spawn, "A", nats_cluster.nodes[0].url)
    c, _ = federated(spawn, "C", nats_cluster.nodes[2].url)
    node = nats_cluster.nodes[2]
    wait_for(lambda: link_subjects(node, "C"), timeout=10)  # connected, control subjects
    assert not {s for s in link_subjects(node, "C") if s.startswith("loom.ev.")}

    async def body() -> None:
        sender = Actor(name="sender", broker=a)
        await sender.start()
        reader = Recorder("reader", c)
        await reader.start()
        try:
            await until(lambda: "loom.ev.fed.>" in link_subjects(node, "C"), timeout=10)

            await until_heard(lambda: sender.emit("fed.x", 1), lambda: bool(reader.got))
        finally:
            await reader.stop()
        await until(lambda: "loom.ev.fed.>" not in link_subjects(node, "C"), timeout=10)
        await sender.stop()

    asyncio.run(body())


def test_a_request_is_answered_by_an_actor_on_another_broker(
    spawn: Callable[..., Proc], nats_node: Cluster
) -> None:
    """An actor on A requests ``svc.echo``; the one answering it is on B: the reply
    comes back to A's requester (and only a reply to that request would)."""
    a, _ = federated(spawn, "A", nats_node.urls)
    b, _ = federated(spawn, "B", nats_node.urls)

    class Echo(Actor):
        @on("svc.echo")
        async def echo(self, event: Event) -> dict[str, Any]:
            return {"echo": event.data, "by": self.name}

    async def body() -> None:
        echo = Echo(name="echo", broker=b)
        asker = Actor(name="asker", broker=a)
        await echo.start()
        await asker.start()
        try:

            async def answered() -> Any:
                try:
                    return await asker.request("svc.echo", "hi", timeout=0.5)
                except RequestTimeoutError:
                    return None

            assert await eventually(answered, timeout=20) == {"echo": "hi", "by": "echo"}
            for n in range(5):
                assert await asker.request("svc.echo", n, timeout=5) == {"echo": n, "by": "echo"}
        finally:
            await asker.stop()
            await echo.stop()

    asyncio.run(body())


def test_hub_and_leaf_carry_events_and_calls(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    """docs/federation.md's hub and leaves: broker A federates to a hub server, broker B
    to a NATS leaf node of that hub (its own local server, as on a machine that cannot
    reach the hub itself): events and tool calls cross both ways, the link none the
    wiser."""
    hub_port, leaf_port, leaf_listen = (
        int(free_tcp_endpoint().rpartition(":")[2]) for _ in range(3)
    )
    hub = tmp_path / "hub.conf"
    hub.write_text(f"port: {hub_port}\nleafnodes {{ port: {leaf_listen} }}\n")
    leaf = tmp_path / "leaf.conf"
    leaf.write_text(
        f"port: {leaf_port}\n"
        f'leafnodes {{ remotes: [ {{ url: "nats-leaf://127.0.0.1:{leaf_listen}" }} ] }}\n'
    )
    spawn(NATS_SERVER, "-c", str(hub)).wait_line("Server is ready", timeout=20)
    leaf_proc = spawn(NATS_SERVER, "-c", str(leaf))
    leaf_proc.wait_line("Server is ready", timeout=20)
    leaf_proc.wait_line("Leafnode connection created", timeout=20)
    a, _ = federated(spawn, "A", f"nats://127.0.0.1:{hub_port}")
    b, _ = federated(spawn, "B", f"nats://127.0.0.1:{leaf_port}")
    start_worker(spawn, a, "tools-a")

    async def body() -> None:
        sender = Actor(name="sender", broker=a)
        reader = Recorder("reader", b)
        await sender.start()
        await reader.start()
        try:
            await until_heard(lambda: sender.emit("fed.leaf", 1), lambda: bool(reader.got))
            async with await ToolClient.connect(b) as client:

                async def served() -> bool:
                    return (await client.directory()).tool("sample.add") is not None

                await eventually(served, timeout=15)
                assert await client.call("sample.add", {"a": 1, "b": 2}) == 3
        finally:
            await reader.stop()
            await sender.stop()

    asyncio.run(body())
