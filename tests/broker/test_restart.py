"""Liveness and reconnection: `$sys` events, and a broker killed and started again."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import (
    HEARTBEAT,
    Proc,
    eventually,
    spawn_actor,
    start_broker,
    start_worker,
    until,
)

from loom import Actor, Event
from loom.errors import BrokerLostError


class Watcher(Actor):
    """Keeps `$sys` events and counts link hooks."""

    def __init__(self, broker: str) -> None:
        super().__init__(name="watcher", broker=broker)
        self.events: list[Event] = []
        self.lost = 0
        self.restored = 0

    def keep(self, event: Event) -> None:
        self.events.append(event)

    def seen(self, topic: str, name: str) -> list[Event]:
        return [e for e in self.events if e.topic == topic and e.data["name"] == name]

    async def on_link_lost(self) -> None:
        self.lost += 1

    async def on_link_restored(self) -> None:
        self.restored += 1


def test_sys_events_tell_who_joins_and_leaves(mesh: str, spawn: Callable[..., Proc]) -> None:
    """Workers and actors joining, leaving (BYE) and dying (silence) are `$sys` events."""

    async def body() -> None:
        watcher = Watcher(mesh)
        await watcher.subscribe("$sys.**", watcher.keep)
        await watcher.start()
        try:
            worker = await asyncio.to_thread(start_worker, spawn, mesh, "w1")
            (joined,) = await until(lambda: watcher.seen("$sys.worker.joined", "w1"))
            assert joined.data["pid"] == worker.pid and "sample.add" in joined.data["tools"]
            assert joined.sender == "loom-broker"
            assert await asyncio.to_thread(worker.stop) == 0
            (left,) = await until(lambda: watcher.seen("$sys.worker.left", "w1"))
            assert left.data["reason"] == "left"
            echo = await asyncio.to_thread(spawn_actor, spawn, "echo", mesh)
            await until(lambda: watcher.seen("$sys.actor.joined", "echo"))
            echo.kill()  # no BYE: the broker notices the silence
            (died,) = await until(lambda: watcher.seen("$sys.actor.left", "echo"), timeout=5)
            assert died.data["reason"] == "went silent"
        finally:
            await watcher.stop()

    asyncio.run(body())


@pytest.mark.timeout(90)
def test_everyone_rejoins_a_restarted_broker(
    spawn: Callable[..., Proc], endpoint: str, short_tmp: Path
) -> None:
    """SIGKILL the broker mid-call, start another on the same endpoint: the call fails
    BROKER_LOST; actors and workers rejoin by themselves (new TCP ports too), hooks run,
    requests and tool calls work again."""
    heartbeat = ("--heartbeat", str(HEARTBEAT))
    first = start_broker(spawn, endpoint, *heartbeat)
    worker = start_worker(spawn, endpoint, "w1")
    echo = spawn_actor(spawn, "echo", endpoint)

    async def body() -> None:
        watcher = Watcher(endpoint)
        await watcher.start()
        try:
            assert await watcher.request("ping.a", 1, timeout=5) == {
                "ok": True,
                "data": 1,
                "from": "echo",
            }
            marker = str(short_tmp / "held")
            held = asyncio.ensure_future(
                watcher.tool("sample.hold_idempotent", marker=marker, seconds=30)
            )
            await until(lambda: os.path.exists(marker))
            os.kill(first.pid, signal.SIGKILL)
            with pytest.raises(BrokerLostError):
                await asyncio.wait_for(held, timeout=5)
            await until(lambda: watcher.lost == 1, timeout=5)
            await asyncio.to_thread(start_broker, spawn, endpoint, *heartbeat)
            await until(lambda: watcher.restored == 1, timeout=10)

            async def everyone() -> bool:
                directory = await watcher.directory()
                names = {a.name for a in directory.actors} | {w.name for w in directory.workers}
                return names >= {"watcher", "echo", "w1"}

            await eventually(everyone)
            # listed once it said HELLO; its subscriptions hold once it says this:
            await asyncio.to_thread(echo.wait_line, "link restored")
            reply = await watcher.request("ping.b", 2, timeout=5)
            assert reply == {"ok": True, "data": 2, "from": "echo"}
            assert await watcher.tool("sample.add", a=1, b=1) == 2
        finally:
            await watcher.stop()

    asyncio.run(body())
    assert "broker back" in echo.output and "broker back" in worker.output
