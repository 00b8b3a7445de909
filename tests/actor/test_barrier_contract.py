"""Barriers and contract nets among real actors on a real broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Proc, eventually, free_tcp_endpoint, spawn_actor, until

from loom import Actor, Event
from loom.actor import Assembled, Awarded

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def endpoint() -> str:
    return free_tcp_endpoint()


def test_a_barrier_waits_for_everyone_and_names_the_missing(mesh: str) -> None:
    """Three named participants arriving at different times all pass together (one of
    them from inside a handler); with a fourth that never comes, everyone waits until
    the deadline and the result names it."""

    async def go() -> tuple[list[Assembled], list[Assembled]]:
        actors = [Actor(name=f"p{i}", broker=mesh) for i in range(3)]
        in_handler: list[Assembled] = []

        async def at_barrier(event: Event) -> None:
            in_handler.append(await actors[2].barrier("step.1", ["p0", "p1", "p2"], timeout=10))

        await actors[2].subscribe("go.p2", at_barrier)
        for actor in actors:
            await actor.start()
        try:
            first = asyncio.ensure_future(
                actors[0].barrier("step.1", ["p0", "p1", "p2"], timeout=10)
            )
            second = asyncio.ensure_future(
                actors[1].barrier("step.1", ["p0", "p1", "p2"], timeout=10)
            )
            await actors[0].emit("go.p2")  # p2 arrives from inside its handler
            passed = [*await asyncio.gather(first, second)]
            await until(lambda: in_handler)
            passed.append(in_handler[0])
            short = await asyncio.gather(
                *(a.barrier("step.2", ["p0", "p1", "p2", "ghost"], timeout=1.0) for a in actors)
            )
        finally:
            for actor in actors:
                await actor.stop()
        return passed, list(short)

    passed, short = asyncio.run(go())
    for result in passed:
        assert result.complete and sorted(result.arrived) == ["p0", "p1", "p2"]
        assert result.missing == []
    for result in short:
        assert not result.complete and result.missing == ["ghost"]
        assert sorted(result.arrived) == ["p0", "p1", "p2"]


def test_a_barrier_by_count(mesh: str) -> None:
    async def go() -> list[Assembled]:
        actors = [Actor(name=f"c{i}", broker=mesh) for i in range(2)]
        for actor in actors:
            await actor.start()
        try:
            return list(await asyncio.gather(*(a.barrier("count", 2, timeout=10) for a in actors)))
        finally:
            for actor in actors:
                await actor.stop()

    results = asyncio.run(go())
    assert all(r.complete and sorted(r.arrived) == ["c0", "c1"] for r in results)


def test_a_contract_net_awards_the_best_bid(mesh: str, spawn: Callable[..., Proc]) -> None:
    """Three bidders: one refuses, one bids late (after the bidding deadline, ignored),
    two bid in time; the cheapest wins and does the job, the other is rejected."""
    for name, price, *delay in (
        ("cheap", "3"),
        ("dear", "9"),
        ("busy", "refuse"),
        ("late", "1", "3.0"),
    ):
        spawn_actor(spawn, "bidder", mesh, name, price, *delay)

    async def go() -> tuple[Awarded, Any]:
        boss = Actor(name="boss", broker=mesh)
        await boss.start()
        try:
            outcome = await boss.contract(
                "jobs.translate", {"text": "hola"}, score=lambda bid: -bid["price"], bid_timeout=1.5
            )

            async def told() -> Any:  # the reject is an event: it may trail the answer
                return await boss.request("bidder.dear.rejected")

            return outcome, await eventually(told)
        finally:
            await boss.stop()

    outcome, rejected = asyncio.run(go())
    assert outcome.winner == "cheap"
    assert outcome.result == {"done_by": "cheap", "task": {"text": "hola"}}
    assert outcome.proposals == {"cheap": {"price": 3.0}, "dear": {"price": 9.0}}
    assert outcome.refused == {"busy": "too busy"}
    assert outcome.missing == ["late"] and outcome.error is None
    assert rejected is True
