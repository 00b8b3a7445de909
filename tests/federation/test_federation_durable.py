"""Durable subscriptions backed by JetStream: a subscriber resumes where it left off on
another broker after its own broker (its host) is gone."""

from __future__ import annotations

import asyncio
import hashlib
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import Proc, broker_stats, eventually, until
from federation_helpers import Cluster, federated, nats_cluster, nats_node, settled
from nats.aio.client import Client as NatsClient

from loom import Actor, Event, on

__all__ = ["nats_cluster", "nats_node"]  # the fixtures, imported for pytest

pytestmark = pytest.mark.timeout(120)

SETTINGS = """
[federation]
durable = "jetstream"
stream_replicas = 3
"""


class Billing(Actor):
    """A durable subscriber ``billing`` on ``orders.*``."""

    def __init__(self, broker: str) -> None:
        super().__init__(name="billing", broker=broker)
        self.got: list[Any] = []

    @on("orders.*", durable="billing")
    async def bill(self, event: Event) -> None:
        self.got.append((event.data, event.envelope.origin))


async def ack_floor(servers: str, name: str) -> int:
    """Where the JetStream consumer of durable subscription ``name`` stands."""
    nc = NatsClient()
    await nc.connect(servers=servers.split(","))
    try:
        durable = "loom-" + hashlib.sha256(name.encode()).hexdigest()[:40]
        info = await nc.jetstream().consumer_info("LOOM-loom", durable)
        return int(info.ack_floor.stream_seq)
    finally:
        await nc.close()


def test_a_durable_subscriber_resumes_on_another_broker(
    spawn: Callable[..., Proc], nats_cluster: Cluster, tmp_path: Path
) -> None:
    """billing reads orders 0-9 on B and stops; B's broker is killed; orders 10-19 are
    published meanwhile on A; billing starts again on A and gets 10-19, each once, and
    none of 0-9 again."""
    config = tmp_path / "loom.toml"
    config.write_text(SETTINGS)
    urls = nats_cluster.urls
    data = ["--config", str(config), "--data-dir", str(tmp_path / "data")]
    a, _ = federated(spawn, "A", urls, *data)
    b, broker_b = federated(spawn, "B", urls, "--config", str(config))

    async def first() -> None:
        shop = Actor(name="shop", broker=a)
        await shop.start()
        billing = Billing(b)
        await billing.start()
        try:
            for n in range(10):
                await shop.emit("orders.new", n, qos="reliable")
            await until(lambda: len(billing.got) >= 10, timeout=20)
            await eventually(lambda: floor_at_least(urls, 10), timeout=10)
        finally:
            await billing.stop()
            await shop.stop()
        assert billing.got == [(n, "local") for n in range(10)]

    asyncio.run(first())
    broker_b.popen.send_signal(signal.SIGKILL)
    broker_b.popen.wait(10)

    async def second() -> None:
        shop = Actor(name="shop", broker=a)
        await shop.start()
        for n in range(10, 20):
            await shop.emit("orders.new", n, qos="reliable")
        billing = Billing(a)
        await billing.start()
        try:
            await until(lambda: len(billing.got) >= 10, timeout=20)
            await eventually(lambda: floor_at_least(urls, 20), timeout=10)
        finally:
            await billing.stop()
            await shop.stop()
        assert billing.got == [(n, "local") for n in range(10, 20)]

    asyncio.run(second())


async def floor_at_least(servers: str, seq: int) -> bool:
    return await ack_floor(servers, "billing") >= seq


def test_reliable_events_logged_while_the_link_is_away_reach_jetstream(
    spawn: Callable[..., Proc], nats_node: Cluster, tmp_path: Path
) -> None:
    """A's link is killed: A goes on logging reliable events, which no link takes. The
    broker starts its link again, which stores what A logged meanwhile: billing, on B,
    gets every order once."""
    config = tmp_path / "loom.toml"
    config.write_text('[federation]\ndurable = "jetstream"\n')
    url = nats_node.urls
    a, broker_a = federated(
        spawn, "A", url, "--config", str(config), "--data-dir", str(tmp_path / "data")
    )
    b, _ = federated(spawn, "B", url, "--config", str(config))

    def link_of(broker: Proc) -> psutil.Process | None:
        children = psutil.Process(broker.pid).children()
        return next((c for c in children if "federate" in c.cmdline()), None)

    async def body() -> None:
        shop = Actor(name="shop", broker=a)
        await shop.start()
        billing = Billing(b)
        await billing.start()
        try:
            await shop.emit("orders.new", 0, qos="reliable")
            await until(lambda: len(billing.got) >= 1, timeout=20)
            link = link_of(broker_a)
            assert link is not None
            link.kill()
            await eventually(lambda: detached(a), timeout=10)
            for n in range(1, 11):  # logged by A, taken by no link
                await shop.emit("orders.new", n, qos="reliable")
            await until(lambda: len(billing.got) >= 11, timeout=30)
            await settled(lambda: len(billing.got), quiet=1.0)
        finally:
            await billing.stop()
            await shop.stop()
        assert billing.got == [(n, "local") for n in range(11)]

    asyncio.run(body())


async def detached(broker: str) -> bool:
    stats = await asyncio.to_thread(broker_stats, broker)
    return bool(stats["federation"]["state"] == "detached")
