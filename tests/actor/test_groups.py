"""Queue groups with real member processes on a real broker: each event or request to
exactly one live member, spread evenly; a member that dies holding a request has it
offered to another (redeliver) or its requester told (MemberLostError); members join and
leave at run time."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Proc, asking, broker_stats, eventually, free_tcp_endpoint, spawn_actor, until

from loom import Actor, Event, RemoteError

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def endpoint() -> str:
    return free_tcp_endpoint()


def members(
    spawn: Callable[..., Proc], mesh: str, *names: str, extra: tuple[str, ...] = ()
) -> list[Proc]:
    return [spawn_actor(spawn, "member", mesh, name, *extra) for name in names]


def test_a_group_of_three_spreads_requests_and_events(
    mesh: str, spawn: Callable[..., Proc]
) -> None:
    """300 requests answered once each, spread within 20% of 100 per member (round
    robin: exactly); 30 events each reach one member only."""
    members(spawn, mesh, "m1", "m2", "m3")

    async def body(actor: Actor) -> tuple[collections.Counter[str], list[int]]:
        answered: collections.Counter[str] = collections.Counter()
        for i in range(300):
            reply = await actor.request("research.ask", i, timeout=5)
            assert reply["q"] == i
            answered[reply["by"]] += 1
        for i in range(30):
            await actor.emit("research.note", i)

        async def notes() -> list[int] | None:  # events and these requests: other topics
            counts = [await actor.request(f"member.{m}.count") for m in ("m1", "m2", "m3")]
            return counts if sum(counts) >= 30 else None

        return answered, await eventually(notes)

    answered, notes = asking(mesh, body)
    assert sorted(answered) == ["m1", "m2", "m3"]
    assert all(80 <= count <= 120 for count in answered.values()), answered
    assert sum(answered.values()) == 300
    assert sum(notes) == 30 and all(n == 10 for n in notes), notes
    lanes = broker_stats(mesh)["groups"]["lanes"]
    assert {"group": "researchers", "pattern": "research.ask", "members": ["m1", "m2", "m3"]} in [
        {**lane, "members": sorted(lane["members"])} for lane in lanes
    ]


def test_a_member_killed_holding_a_redeliverable_request_loses_none(
    mesh: str, spawn: Callable[..., Proc]
) -> None:
    """Members that may run again: the killed one's request is answered by another."""
    holder = members(spawn, mesh, "holder", extra=("redeliver", "hold"))[0]
    members(spawn, mesh, "m2", "m3", extra=("redeliver",))

    async def body(actor: Actor) -> Any:
        first = asyncio.ensure_future(actor.request("research.ask", "hold", timeout=20))
        others = [
            asyncio.ensure_future(actor.request("research.ask", "hold", timeout=20))
            for _ in range(2)
        ]
        await asyncio.to_thread(holder.wait_line, "holding", 15)
        os.kill(holder.pid, signal.SIGKILL)
        answers = await asyncio.gather(first, *others)
        return answers

    answers = asking(mesh, body)
    assert len(answers) == 3
    assert {a["by"] for a in answers} <= {"m2", "m3"}  # the holder answered none
    assert broker_stats(mesh)["groups"]["redelivered"] >= 1


def test_a_member_killed_holding_a_request_that_may_not_run_twice(
    mesh: str, spawn: Callable[..., Proc]
) -> None:
    """Members that did not say redeliver: the requester gets MemberLostError, not a
    timeout."""
    holder = members(spawn, mesh, "holder", extra=("hold",))[0]
    members(spawn, mesh, "m2")

    async def body(actor: Actor) -> Any:
        calls = [
            asyncio.ensure_future(actor.request("research.ask", "hold", timeout=20))
            for _ in range(2)
        ]
        await asyncio.to_thread(holder.wait_line, "holding", 15)
        os.kill(holder.pid, signal.SIGKILL)
        return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = asking(mesh, body)
    errors = [o for o in outcomes if isinstance(o, RemoteError)]
    assert len(errors) == 1 and errors[0].type_name == "MemberLostError"
    assert "holder" in errors[0].message
    assert [o["by"] for o in outcomes if isinstance(o, dict)] == ["m2"]


def test_members_join_and_leave_at_run_time(mesh: str, spawn: Callable[..., Proc]) -> None:
    """An in-process member joins with `subscribe(group=...)`, takes its share, leaves
    with `unsubscribe(group=...)`; the others take everything again."""
    members(spawn, mesh, "m1")

    async def body(actor: Actor) -> tuple[set[str], set[str]]:
        late = Actor(name="late", broker=mesh)
        await late.start()
        try:

            def answer(event: Event) -> dict[str, Any]:
                return {"by": "late", "q": event.data}

            await late.subscribe("research.ask", answer, group="researchers")
            during = {(await actor.request("research.ask", i))["by"] for i in range(6)}
            assert await late.unsubscribe("research.ask", group="researchers") == 1
            after = {(await actor.request("research.ask", i))["by"] for i in range(6)}
        finally:
            await late.stop()
        return during, after

    during, after = asking(mesh, body)
    assert during == {"m1", "late"} and after == {"m1"}


def test_a_group_is_not_a_plain_subscription(mesh: str, spawn: Callable[..., Proc]) -> None:
    """A plain subscriber of the same topic still gets every event; the group members
    share them."""
    members(spawn, mesh, "m1", "m2")

    async def go() -> list[str]:
        seen: list[str] = []
        tap = Actor(name="tap", broker=mesh)
        await tap.subscribe("research.note", lambda event: seen.append(event.topic))
        await tap.start()
        try:
            sender = Actor(name="sender", broker=mesh)
            await sender.start()
            try:
                for i in range(10):
                    await sender.emit("research.note", i)
                await until(lambda: len(seen) == 10)

                async def notes() -> list[int] | None:
                    counts = [await sender.request(f"member.{m}.count") for m in ("m1", "m2")]
                    return counts if sum(counts) >= 10 else None

                assert await eventually(notes) == [5, 5]
            finally:
                await sender.stop()
        finally:
            await tap.stop()
        return seen

    assert len(asyncio.run(go())) == 10
