"""Tool calls through a real broker to real `loom worker` processes."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Proc, eventually, start_worker, until

from loom import Actor, ToolClient
from loom.errors import (
    CallCancelledError,
    InvalidParamsError,
    OverloadedError,
    ToolFailedError,
    ToolTimeoutError,
    UnknownToolError,
    WorkerLostError,
)
from loom.tools._loader import load_tools

Body = Callable[[ToolClient], Awaitable[None]]


def with_client(broker: str, body: Body) -> None:
    """Run ``body`` with a connected client (the path `loom call` takes)."""

    async def run() -> None:
        async with await ToolClient.connect(broker, name="test") as client:
            await body(client)

    asyncio.run(run())


def marker_pids(marker: Path) -> list[int]:
    return [int(line) for line in marker.read_text().split()] if marker.exists() else []


def test_call_returns_the_result_and_the_schema_is_announced(
    mesh: str, spawn: Callable[..., Proc]
) -> None:
    """A call returns the tool's value; the directory holds the schema the worker made."""
    start_worker(spawn, mesh, "w1")
    local = {t.name: t for t in load_tools("tests/workers/sample.py")}

    async def body(client: ToolClient) -> None:
        assert await client.call("sample.add", {"a": 2, "b": 40}) == 42
        directory = await client.directory()
        tool = directory.tool("sample.add")
        assert tool is not None and tool.schema_ == local["sample.add"].schema
        assert tool.description == "Add two integers." and tool.idempotent
        assert tool.workers == ["w1"] and tool.calls == 1
        assert [w.name for w in directory.workers] == ["w1"]

    with_client(mesh, body)


def test_invalid_params_unknown_tool_and_tool_errors_are_typed(
    mesh: str, spawn: Callable[..., Proc]
) -> None:
    """INVALID_PARAMS names the field, UNKNOWN_TOOL the tool, TOOL_ERROR the remote type;
    a tool cancelled from within answers CANCELLED."""
    start_worker(spawn, mesh, "w1")

    async def body(client: ToolClient) -> None:
        with pytest.raises(InvalidParamsError, match="a: Input should be a valid integer") as bad:
            await client.call("sample.add", {"a": "two"})
        assert bad.value.code == "INVALID_PARAMS" and bad.value.tool == "sample.add"
        with pytest.raises(InvalidParamsError, match="a: Field required"):
            await client.call("sample.add", {})
        with pytest.raises(UnknownToolError, match=r"no worker serves 'sample\.nope'") as unknown:
            await client.call("sample.nope", {})
        assert unknown.value.code == "UNKNOWN_TOOL"
        with pytest.raises(ToolFailedError, match="ValueError: broken on purpose") as failed:
            await client.call("sample.boom", {"message": "broken on purpose"})
        assert failed.value.type_name == "ValueError" and failed.value.code == "TOOL_ERROR"
        with pytest.raises(CallCancelledError) as cancelled:
            await client.call("sample.gives_up")
        assert cancelled.value.code == "CANCELLED"
        assert await client.call("sample.add", {"a": 1}) == 2  # and the worker goes on

    with_client(mesh, body)


def test_many_calls_in_flight_all_complete(mesh: str, spawn: Callable[..., Proc]) -> None:
    """3000 calls, 32 in flight at a time, from an actor: every one is answered right
    (the session reads its socket even when a send consumed the wake-up)."""
    start_worker(spawn, mesh, "w1")

    async def body() -> None:
        actor = Actor(name="pipeliner", broker=mesh)
        await actor.start()
        try:
            todo = iter(range(3000))
            results: dict[int, int] = {}

            async def lane() -> None:
                for i in todo:
                    results[i] = await actor.tool("sample.add", a=i, b=1, timeout=10)

            await asyncio.gather(*(lane() for _ in range(32)))
            assert results == {i: i + 1 for i in range(3000)}
        finally:
            await actor.stop()

    asyncio.run(body())


def test_calls_spread_least_recently_used_over_three_workers(
    mesh: str, spawn: Callable[..., Proc]
) -> None:
    """Sequential calls go round the three workers: each serves exactly a third."""
    workers = [start_worker(spawn, mesh, f"w{i}") for i in range(3)]

    async def body(client: ToolClient) -> None:
        await until_workers(client, 3)
        pids = [await client.call("sample.whoami") for _ in range(30)]
        assert collections.Counter(pids) == {w.pid: 10 for w in workers}

    with_client(mesh, body)


async def until_workers(client: ToolClient, count: int) -> None:
    async def enough() -> bool:
        return len((await client.directory()).workers) == count

    await eventually(enough)


@pytest.mark.parametrize("idempotent", [True, False])
def test_worker_killed_mid_call(
    mesh: str, spawn: Callable[..., Proc], short_tmp: Path, idempotent: bool
) -> None:
    """SIGKILL mid-call: an idempotent call is run again elsewhere, another call fails
    WORKER_LOST; both well within the call's deadline."""
    workers = {w.pid: w for w in (start_worker(spawn, mesh, f"w{i}") for i in range(2))}
    marker = short_tmp / "started"
    tool = "sample.hold_idempotent" if idempotent else "sample.work"
    args = {"marker": str(marker), "seconds": 2.0} if idempotent else {"ms": 3000}

    async def body(client: ToolClient) -> None:
        await until_workers(client, 2)
        started = time.monotonic()
        call = asyncio.ensure_future(client.call(tool, args, timeout=20))
        if idempotent:
            first = (await until(lambda: marker_pids(marker)))[0]
        else:  # sample.work leaves no marker: ask the directory who runs it
            first = await running_worker(client, workers)
        workers[first].kill()
        if idempotent:
            assert await call != first  # the survivor's pid
            assert marker_pids(marker)[0] == first and len(marker_pids(marker)) == 2
        else:
            with pytest.raises(WorkerLostError, match="not idempotent"):
                await call
        assert time.monotonic() - started < 10
        directory = await client.directory()
        assert len(directory.workers) == 1  # the dead one is gone

    with_client(mesh, body)


async def running_worker(client: ToolClient, workers: dict[int, Proc]) -> int:
    async def busy() -> int | None:
        return next((w.pid for w in (await client.directory()).workers if w.in_flight), None)

    pid: int = await eventually(busy)
    return pid


def test_progress_keeps_a_slow_tool_alive_past_its_timeout(
    mesh: str, spawn: Callable[..., Proc], short_tmp: Path
) -> None:
    """A tool with a 0.5 s timeout runs 2 s reporting progress; a silent one times out."""
    start_worker(spawn, mesh, "w1")

    async def body(client: ToolClient) -> None:
        reports: list[Any] = []
        result = await client.call(
            "sample.crawl", {"steps": 10, "interval": 0.2}, on_progress=reports.append
        )
        assert result == 10 and reports[-1] == {"step": 10} and len(reports) == 10
        started = time.monotonic()
        with pytest.raises(ToolTimeoutError, match=r"no result or progress within 0\.5s"):
            await client.call("sample.hold", {"marker": str(short_tmp / "m"), "seconds": 3})
        assert time.monotonic() - started < 2.0

    with_client(mesh, body)


def test_cancelling_the_caller_cancels_the_call_on_the_worker(
    mesh: str, spawn: Callable[..., Proc], short_tmp: Path
) -> None:
    """Cancelling the awaiting task sends CANCEL; the tool's coroutine is cancelled."""
    start_worker(spawn, mesh, "w1")
    marker = short_tmp / "cancel"

    async def body(client: ToolClient) -> None:
        call = asyncio.ensure_future(client.call("sample.wait_cancel", {"marker": str(marker)}))
        await until(lambda: marker.exists() and marker.read_text() == "started")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await until(lambda: marker.read_text() == "cancelled")

        async def freed() -> bool:  # the worker's CANCELLED frees the slot
            tool = (await client.directory()).tool("sample.wait_cancel")
            assert tool is not None
            return tool.in_flight == 0

        await eventually(freed, timeout=5)

    with_client(mesh, body)


def test_a_worker_attached_under_load_takes_calls_at_once(
    mesh: str, spawn: Callable[..., Proc]
) -> None:
    """With calls queued on one worker, a second one starting shares the rest."""
    first = start_worker(spawn, mesh, "w1")

    async def body(client: ToolClient) -> None:
        calls = [
            asyncio.ensure_future(client.call("sample.work", {"ms": 100}, timeout=30))
            for _ in range(120)
        ]  # 4 at a time on w1: 3 s alone
        await until(lambda: sum(c.done() for c in calls) >= 8)
        second = await asyncio.to_thread(start_worker, spawn, mesh, "w2")
        pids = collections.Counter(await asyncio.gather(*calls))
        assert set(pids) == {first.pid, second.pid}
        assert pids[second.pid] >= 20, pids

    with_client(mesh, body)


def test_sigterm_drains_without_losing_an_accepted_call(
    mesh: str, spawn: Callable[..., Proc]
) -> None:
    """SIGTERM mid-load: the worker finishes what it holds, says BYE, exits 0; every call
    (not idempotent) succeeds, on it or on the other worker."""
    leaving = start_worker(spawn, mesh, "leaving")
    staying = start_worker(spawn, mesh, "staying")

    async def body(client: ToolClient) -> None:
        await until_workers(client, 2)
        calls = [
            asyncio.ensure_future(client.call("sample.work", {"ms": 300}, timeout=30))
            for _ in range(40)
        ]
        await until(lambda: sum(c.done() for c in calls) >= 4)
        leaving.popen.send_signal(signal.SIGTERM)
        pids = collections.Counter(await asyncio.gather(*calls))
        assert sum(pids.values()) == 40 and pids[leaving.pid] >= 4 and pids[staying.pid] >= 4

    with_client(mesh, body)
    assert leaving.stop() == 0
    assert "worker stopped" in leaving.output and "calls left" not in leaving.output


def test_a_full_queue_answers_overloaded(spawn: Callable[..., Proc], endpoint: str) -> None:
    """One slot and a queue of two: of five calls at once, two are OVERLOADED at once."""
    from conftest import start_broker

    broker = start_broker(spawn, endpoint, "--max-queue", "2")
    start_worker(spawn, endpoint, "w1")

    async def body(client: ToolClient) -> None:
        await until_workers(client, 1)
        calls = [
            asyncio.ensure_future(
                client.call("sample.hold_idempotent", {"marker": os.devnull, "seconds": 0.5})
            )
            for _ in range(5)
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        overloaded = [r for r in results if isinstance(r, OverloadedError)]
        assert len(overloaded) == 2 and all(isinstance(r, int) for r in results[:3])

    with_client(endpoint, body)
    assert broker.stop() == 0


def test_an_actor_calls_tools_and_appears_in_the_directory(
    mesh: str, spawn: Callable[..., Proc]
) -> None:
    """`await self.tool(...)` from an actor and from its handler, with kwargs or a dict;
    the directory lists the actor with its patterns."""
    start_worker(spawn, mesh, "w1")

    class Caller(Actor):
        async def on_start(self) -> None:
            await self.subscribe("jobs.*", self.job)

        async def job(self, event: Any) -> int:
            return int(await self.tool("sample.add", a=event.data, b=1))

    async def body() -> None:
        actor = Caller(name="caller", broker=mesh)
        await actor.start()
        try:
            assert await actor.tool("sample.add", {"a": 1}, b=2) == 3
            directory = await actor.directory()
            (me,) = [a for a in directory.actors if a.name == "caller"]
            assert me.patterns == ["jobs.*"] and me.pid == os.getpid()
            assert await actor.request("jobs.x", 41) == 42  # a handler calling a tool
        finally:
            await actor.stop()

    asyncio.run(body())


def test_a_stopped_worker_loses_its_call_to_another(
    mesh: str, spawn: Callable[..., Proc], short_tmp: Path
) -> None:
    """SIGSTOP the worker running an idempotent call: after ~3 silent heartbeats the call
    runs elsewhere; resumed with SIGCONT, the worker rejoins and serves again."""
    workers = {w.pid: w for w in (start_worker(spawn, mesh, f"w{i}") for i in range(2))}
    marker = short_tmp / "started"

    async def body(client: ToolClient) -> None:
        await until_workers(client, 2)
        args = {"marker": str(marker), "seconds": 1.0}
        call = asyncio.ensure_future(client.call("sample.hold_idempotent", args, timeout=20))
        first = (await until(lambda: marker_pids(marker)))[0]
        os.kill(first, signal.SIGSTOP)
        try:
            assert await call != first
        finally:
            os.kill(first, signal.SIGCONT)
        await until_workers(client, 2)  # it rejoined (RESET, then READY again)
        pids = {await client.call("sample.whoami") for _ in range(4)}
        assert pids == set(workers)

    with_client(mesh, body)
    assert any("broker back" in w.output for w in workers.values())


def test_a_new_ready_replaces_the_workers_tool_set(mesh: str) -> None:
    """`Worker.replace_tools` (what an MCP bridge does on list_changed): a tool left out
    leaves the directory and takes no new call (UNKNOWN_TOOL), while its call in flight
    still ends with its result; a tool added takes calls at once."""
    from loom import Worker, tool

    release = asyncio.Event()

    @tool(name="set.hold")
    async def hold() -> str:
        await release.wait()
        return "held"

    @tool(name="set.add")
    async def add(a: int, b: int) -> int:
        return a + b

    @tool(name="set.mul")
    async def mul(a: int, b: int) -> int:
        return a * b

    async def body(client: ToolClient) -> None:
        worker = Worker([hold, add], broker=mesh, name="changing")
        await worker.start()
        try:
            in_flight = asyncio.ensure_future(client.call("set.hold", {}))
            await until(lambda: worker.stats.calls == 1)
            await worker.replace_tools([add, mul])
            names = {t.name for t in (await client.directory()).tools}
            assert {"set.add", "set.mul"} <= names and "set.hold" not in names
            assert await client.call("set.mul", {"a": 6, "b": 7}) == 42
            with pytest.raises(UnknownToolError):
                await client.call("set.hold", {})
            release.set()
            assert await in_flight == "held"
            assert await client.call("set.add", {"a": 1, "b": 2}) == 3
        finally:
            await worker.stop()

    with_client(mesh, body)
