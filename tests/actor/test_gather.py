"""Scatter-gather, first-success requests, unsubscribe and `loom request`, with real
responder processes on a real broker."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from conftest import LOOM, Proc, asking, free_tcp_endpoint, spawn_actor, until

from loom import Actor, Event, RemoteError
from loom.actor import Gathered

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def endpoint() -> str:
    return free_tcp_endpoint()


def researchers(spawn: Callable[..., Proc], mesh: str, **modes: str) -> None:
    for name, mode in modes.items():
        spawn_actor(spawn, "researcher", mesh, name, mode)


def test_gather_all_reports_who_answered_failed_and_is_missing(
    mesh: str, spawn: Callable[..., Proc]
) -> None:
    """`all`: the directory names the three responders; a fast one answers, a failing
    one fails, a slow one answers later: all three are accounted for. With a deadline
    shorter than the slow one, it is missing and the gathering is incomplete."""
    researchers(spawn, mesh, quick="ok", broken="fail", slow="slow:1.0")

    async def body(actor: Actor) -> tuple[Gathered, Gathered]:
        full = await actor.gather("research.ask", "tides", timeout=10)
        short = await actor.gather("research.ask", "tides", timeout=0.5)
        return full, short

    full, short = asking(mesh, body)
    assert sorted(full.expected or []) == ["broken", "quick", "slow"]
    assert full.replies == {
        "quick": {"by": "quick", "q": "tides"},
        "slow": {"by": "slow", "q": "tides"},
    }
    assert list(full.failed) == ["broken"] and full.failed["broken"].type_name == "LookupError"
    assert full.complete and full.missing == []
    assert not short.complete and short.missing == ["slow"]
    assert "quick" in short.replies and "broken" in short.failed


@pytest.mark.parametrize(
    "case",
    [
        (1, True, {"quick"}, {"slow", "slower"}),  # first success: the fast one
        (2, False, {"quick"}, {"slow", "slower"}),  # first 2 replies: a failure counts
        ("majority", False, {"quick", "slow"}, {"slower"}),  # 3 of 4 replies
        (2, True, {"quick", "slow"}, {"slower"}),  # 2 successes: waits for slow
        ("any", False, None, None),  # the first reply, whichever
    ],
)
def test_policies_stop_when_met(
    mesh: str, spawn: Callable[..., Proc], case: tuple[Any, bool, Any, Any]
) -> None:
    """Each policy ends the gathering as soon as it is met; who had not answered then
    is reported missing (the failing responder races the quick one, so it is in
    `failed` or in `missing`)."""
    policy, successful, answered, missing = case
    researchers(spawn, mesh, quick="ok", broken="fail", slow="slow:0.5", slower="slow:8")

    async def body(actor: Actor) -> Gathered:
        return await actor.gather(
            "research.ask", 1, policy=policy, successful=successful, timeout=6
        )

    gathered = asking(mesh, body)
    assert gathered.complete
    if answered is None:
        assert len(gathered.replies) + len(gathered.failed) == 1
        return
    assert set(gathered.replies) == answered
    assert missing <= set(gathered.missing) <= missing | {"broken"}
    assert ("broken" in gathered.failed) != ("broken" in gathered.missing)


def test_first_success_passes_over_a_quick_failure(mesh: str, spawn: Callable[..., Proc]) -> None:
    """A plain request takes the first reply, here a failure; `accept="first_success"`
    waits for the correct answer 0.3 s later. Only failures: the first is raised."""
    researchers(spawn, mesh, broken="fail", late="slow:0.3")

    async def body(actor: Actor) -> Any:
        with pytest.raises(RemoteError):
            await actor.request("research.ask", "x", timeout=5)
        good = await actor.request("research.ask", "x", timeout=5, accept="first_success")
        return good

    assert asking(mesh, body) == {"by": "late", "q": "x"}


def test_only_failures_raise_the_first_failure(mesh: str, spawn: Callable[..., Proc]) -> None:
    researchers(spawn, mesh, broken="fail")

    async def body(actor: Actor) -> None:
        with pytest.raises(RemoteError, match="found nothing"):
            await actor.request("research.ask", "x", timeout=1, accept="first_success")

    asking(mesh, body)


def test_gathering_inside_a_handler_does_not_deadlock(
    mesh: str, spawn: Callable[..., Proc]
) -> None:
    """A handler that scatters to the researchers and returns what it gathered: the
    replies reach it while it runs (the reader takes them, not the mailbox)."""
    researchers(spawn, mesh, quick="ok", slow="slow:0.3")

    class Planner(Actor):
        async def plan(self, event: Event) -> dict[str, Any]:
            gathered = await self.gather("research.ask", event.data, timeout=5)
            return {"answers": sorted(r["by"] for r in gathered.values())}

    async def go() -> Any:
        planner = Planner(name="planner", broker=mesh)
        await planner.subscribe("plan.make", planner.plan)
        await planner.start()
        try:
            return await asking_async(mesh, "plan.make", "q")
        finally:
            await planner.stop()

    assert asyncio.run(go()) == {"answers": ["quick", "slow"]}


async def asking_async(mesh: str, topic: str, data: Any) -> Any:
    actor = Actor(name="asker", broker=mesh)
    await actor.start()
    try:
        return await actor.request(topic, data, timeout=10)
    finally:
        await actor.stop()


def test_unsubscribe_stops_a_pattern(mesh: str) -> None:
    """After `unsubscribe`, events on the pattern no longer arrive (an event sent after
    them on a topic still subscribed does), and the directory drops the pattern."""

    async def go() -> None:
        seen: list[str] = []
        listener = Actor(name="listener", broker=mesh)
        await listener.subscribe("news.*", lambda event: seen.append(event.topic))
        await listener.subscribe("marks.*", lambda event: seen.append(event.topic))
        await listener.start()
        sender = Actor(name="sender", broker=mesh)
        await sender.start()
        try:
            await sender.emit("news.1")
            await until(lambda: "news.1" in seen)
            assert await listener.unsubscribe("news.*") == 1
            assert await listener.unsubscribe("news.*") == 0
            await sender.emit("news.2")
            await sender.emit("marks.1")  # after news.2, on one link: arrives after it
            await until(lambda: "marks.1" in seen)
            assert "news.2" not in seen
            actor = (await sender.directory()).actor("listener")
            assert actor is not None and "news.*" not in actor.patterns
        finally:
            await sender.stop()
            await listener.stop()

    asyncio.run(go())


def run_request(mesh: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LOOM, "request", *args, "--broker", mesh, "--timeout", "5"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_loom_request_prints_replies_as_json(mesh: str, spawn: Callable[..., Proc]) -> None:
    researchers(spawn, mesh, quick="ok", broken="fail")
    single = run_request(mesh, "research.ask", '"tides"', "--success")
    assert single.returncode == 0, single.stderr
    assert json.loads(single.stdout) == {"by": "quick", "q": "tides"}
    every = run_request(mesh, "research.ask", '"tides"', "--all")
    assert every.returncode == 0, every.stderr
    gathered = json.loads(every.stdout)
    assert gathered["replies"] == {"quick": {"by": "quick", "q": "tides"}}
    assert gathered["failed"]["broken"]["type"] == "LookupError"
    assert gathered["complete"] and gathered["missing"] == []
    assert run_request(mesh, "research.ask", "{not json").returncode == 2
    nobody = run_request(mesh, "nobody.home", "1")
    assert nobody.returncode == 1 and "no reply" in nobody.stderr
