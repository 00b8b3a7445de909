"""Tools across brokers federated through NATS: a tool served on A is listed and
callable on C, with progress, cancellation, deadlines and error codes intact."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Proc, broker_stats, eventually, loom_at, start_worker, until
from federation_helpers import Cluster, federated, nats_cluster, nats_node
from msgpack import packb, unpackb
from nats.aio.client import Client as NatsClient
from nats.errors import NoRespondersError

from loom.errors import CallCancelledError, ToolFailedError, ToolTimeoutError, UnknownToolError
from loom.session import ToolClient

__all__ = ["nats_cluster", "nats_node"]  # the fixtures, imported for pytest

pytestmark = pytest.mark.timeout(120)


async def listed(client: ToolClient, tool: str) -> Any:
    """The directory's entry for ``tool`` (None while it is not listed)."""
    directory = await client.directory()
    return next((t for t in directory.tools if t.name == tool), None)


def test_a_tool_on_one_broker_is_called_from_another(
    spawn: Callable[..., Proc], nats_cluster: Cluster, tmp_path: Path
) -> None:
    a, _ = federated(spawn, "A", nats_cluster.nodes[0].url)
    c, _ = federated(spawn, "C", nats_cluster.nodes[2].url)
    start_worker(spawn, a, "tools-a")

    async def body() -> None:
        async with await ToolClient.connect(c) as client:
            entry = await eventually(lambda: listed(client, "sample.add"), timeout=15)
            assert entry.brokers == ["A"]
            assert entry.workers == ["federation"]
            assert entry.idempotent  # the spec crossed with the tool
            assert await client.call("sample.add", {"a": 2, "b": 3}) == 5

            steps: list[Any] = []  # each report pushes the 0.5 s lease out, across NATS
            assert (
                await client.call(
                    "sample.crawl", {"steps": 6, "interval": 0.2}, on_progress=steps.append
                )
                == 6
            )
            assert steps == [{"step": n} for n in range(1, 7)]

            with pytest.raises(ToolFailedError, match="kaboom"):
                await client.call("sample.boom", {"message": "kaboom"})
            with pytest.raises(UnknownToolError):
                await client.call("sample.nowhere", {})

            marker = tmp_path / "marker"
            call = asyncio.ensure_future(client.call("sample.wait_cancel", {"marker": str(marker)}))
            await until(marker.exists, timeout=10)
            call.cancel()
            with pytest.raises((asyncio.CancelledError, CallCancelledError)):
                await call
            await until(lambda: marker.read_text() == "cancelled", timeout=10)

    asyncio.run(body())


def test_cancelled_and_timed_out_remote_calls_free_their_slots(
    spawn: Callable[..., Proc], nats_node: Cluster, tmp_path: Path
) -> None:
    """A remote call cancelled, and one past its deadline, leave nothing running on
    either broker: the directory shows no call in flight, and the tool serves again."""
    a, _ = federated(spawn, "A", nats_node.urls)
    c, _ = federated(spawn, "C", nats_node.urls)
    start_worker(spawn, a, "tools-a")

    async def in_flight(client: ToolClient, tool: str) -> int:
        entry = await listed(client, tool)
        return -1 if entry is None else int(entry.in_flight)

    async def body() -> None:
        async with await ToolClient.connect(c) as client, await ToolClient.connect(a) as local:
            await eventually(lambda: listed(client, "sample.hold"), timeout=15)
            marker = tmp_path / "m"
            with pytest.raises(ToolTimeoutError):  # 0.5 s lease, no progress
                await client.call("sample.hold", {"marker": str(marker), "seconds": 3})
            call = asyncio.ensure_future(client.call("sample.wait_cancel", {"marker": str(marker)}))
            await until(lambda: marker.exists() and marker.read_text() == "started", 10)
            call.cancel()
            with pytest.raises((asyncio.CancelledError, CallCancelledError)):
                await call
            for tool in ("sample.hold", "sample.wait_cancel"):
                for where in (client, local):

                    async def idle(w: ToolClient = where, t: str = tool) -> bool:
                        return await in_flight(w, t) == 0

                    await eventually(idle, timeout=10)
            assert await client.call("sample.add", {"a": 1}) == 2

    asyncio.run(body())


def test_calls_from_nats_are_checked_before_they_run(
    spawn: Callable[..., Proc], nats_node: Cluster
) -> None:
    """Anyone on NATS may send to a tool's subject: the link takes only a call to a tool
    its broker exports, on that tool's own subject, for a named caller, and the broker
    applies that caller's rights (the link's own identity is no caller)."""
    a, _ = federated(spawn, "A", nats_node.urls)
    start_worker(spawn, a, "tools-a")

    async def body() -> None:
        async with await ToolClient.connect(a) as client:
            await eventually(lambda: listed(client, "sample.add"), timeout=15)
        nc = NatsClient()
        await nc.connect(servers=[nats_node.urls])
        try:
            await until_served(nc)
            call = {"tool": "sample.add", "args": packb({"a": 1}), "timeout": 5.0, "trace": None}
            cases = {
                "as the link": {**call, "caller": "broker"},
                "for a stranger": {**call, "caller": "nobody"},
                "as the owner": {**call, "caller": "local"},
            }
            answers = {
                name: await ask(nc, "loom.tool.sample.add", body) for name, body in cases.items()
            }
            assert answers["as the link"] == ("fail", "DENIED")
            assert answers["for a stranger"] == ("fail", "DENIED")
            assert answers["as the owner"] == ("result", 2)
            misdirected = [
                ("loom.tool.sample.add", {**call, "caller": None}),  # no caller
                ("loom.tool.sample.add", {**call, "tool": "sample.boom", "caller": "local"}),
                ("loom.tool.sample.add", {**call, "tool": "nope", "caller": "local"}),
            ]
            before = await link_dropped(a)
            for subject, body in misdirected:
                assert await ask(nc, subject, body, expect_none=True) is None

            async def counted() -> bool:  # each was seen, and dropped as such
                return await link_dropped(a) >= before + 3

            await eventually(counted, timeout=10)
        finally:
            await nc.close()

    asyncio.run(body())


async def link_dropped(broker: str) -> int:
    """What the broker's link has dropped so far (it reports every second)."""
    stats = await asyncio.to_thread(broker_stats, broker)
    return int(stats["federation"].get("link", {}).get("dropped", 0))


async def until_served(nc: NatsClient) -> None:
    """Until A's link takes calls to sample.add (its queue subscription is up): a
    well-formed call, so that nothing is dropped on the way."""
    call = {"tool": "sample.add", "args": packb({"a": 0}), "timeout": 5.0, "trace": None}

    async def taken() -> bool:
        try:
            return await ask(nc, "loom.tool.sample.add", {**call, "caller": "local"}) is not None
        except NoRespondersError:
            return False

    await eventually(taken, timeout=15)


async def ask(
    nc: NatsClient, subject: str, body: dict[str, Any], *, expect_none: bool = False
) -> Any:
    """Send one call as another broker's link would; its outcome: ``("result", value)``,
    ``("fail", code)``, or None when it is not taken (no accept within 1 s)."""
    inbox = nc.new_inbox()
    answers: asyncio.Queue[Any] = asyncio.Queue()
    sub = await nc.subscribe(inbox, cb=answers.put)
    try:
        await nc.publish(subject, packb(body), reply=inbox)
        await nc.flush()
        try:
            msg = await asyncio.wait_for(answers.get(), 1.0 if expect_none else 10)
        except TimeoutError:
            return None
        if (msg.headers or {}).get("Status") == "503":
            raise NoRespondersError
        assert unpackb(msg.data)[0] == "accept"
        while True:
            kind, data = unpackb((await asyncio.wait_for(answers.get(), 10)).data)
            if kind == "result":
                return ("result", unpackb(data))
            if kind == "fail":
                return ("fail", unpackb(data)["code"])
    finally:
        await sub.unsubscribe()


def test_loom_list_all_shows_where_each_tool_is_served(
    spawn: Callable[..., Proc], nats_node: Cluster
) -> None:
    """`loom list` on C shows C's own tools; `loom list --all` the ones A serves too,
    with A named; on A, --all says ``here``."""
    a, _ = federated(spawn, "A", nats_node.urls)
    c, _ = federated(spawn, "C", nats_node.urls)
    start_worker(spawn, a, "tools-a")

    async def offered() -> bool:
        async with await ToolClient.connect(c) as client:
            return await listed(client, "sample.add") is not None

    asyncio.run(eventually(offered, timeout=15))
    everything = loom_at(c, "list", "--all")
    assert everything.returncode == 0, everything.stderr
    row = next(line for line in everything.stdout.splitlines() if line.startswith("sample.add "))
    assert " A " in f" {row} " and "here" not in row
    own = loom_at(c, "list")
    assert "TOOLS: none" in own.stdout  # its workers table still shows the link's worker
    at_a = loom_at(a, "list", "--all")
    row = next(line for line in at_a.stdout.splitlines() if line.startswith("sample.add "))
    assert " here " in f" {row} "


def test_a_local_worker_is_preferred_to_the_federation(
    spawn: Callable[..., Proc], nats_node: Cluster
) -> None:
    """sample.whoami is served on A and on C: a call on C goes to C's own worker while
    it is free (its pid answers), and once it is gone, to A's through NATS."""
    a, _ = federated(spawn, "A", nats_node.urls)
    c, _ = federated(spawn, "C", nats_node.urls)
    worker_a = start_worker(spawn, a, "tools-a")
    worker_c = start_worker(spawn, c, "tools-c")

    async def served_by(client: ToolClient, brokers: list[str], local: bool) -> bool:
        entry = await listed(client, "sample.whoami")
        return (
            entry is not None and entry.brokers == brokers and ("tools-c" in entry.workers) == local
        )

    async def body() -> None:
        async with await ToolClient.connect(c) as client:
            await eventually(lambda: served_by(client, ["A"], True), timeout=15)
            for _ in range(5):
                assert await client.call("sample.whoami") == worker_c.pid
            worker_c.stop()
            await eventually(lambda: served_by(client, ["A"], False), timeout=15)
            assert await client.call("sample.whoami") == worker_a.pid

    asyncio.run(body())
