"""Human approval: calls to tools that need it wait at the broker for a decision."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import HEARTBEAT, Proc, eventually, loom_at, start_broker, start_worker, until

from loom import Actor, Event, ToolClient
from loom.errors import ApprovalError, MalformedRequestError, ToolDeniedError


async def wait_pending(client: ToolClient) -> list[dict[str, Any]]:
    """The requests waiting for approval, once there is one."""
    found: list[dict[str, Any]] = await eventually(client.approvals)
    return found


def approval_mesh(spawn: Callable[..., Proc], endpoint: str, *extra: str) -> str:
    start_broker(spawn, endpoint, "--heartbeat", str(HEARTBEAT), *extra)
    return endpoint


def test_an_approved_call_runs_and_the_operator_sees_it_waiting(
    spawn: Callable[..., Proc], endpoint: str, tmp_path: Path
) -> None:
    """The call waits (the caller hears `pending` progress), `loom approvals` lists it
    with its arguments, `loom approve ID` lets it run, and the result comes back."""
    broker = approval_mesh(spawn, endpoint)
    start_worker(spawn, broker, "w1")
    marker = tmp_path / "ran"
    progress: list[Any] = []

    async def body() -> None:
        async with await ToolClient.connect(broker, name="agent") as client:
            call = asyncio.ensure_future(
                client.call("sample.guarded", {"marker": str(marker)}, on_progress=progress.append)
            )
            [request] = await wait_pending(client)
            assert request["tool"] == "sample.guarded" and request["caller"] == "agent"
            assert request["args"] == {"marker": str(marker)}
            listed = await asyncio.to_thread(loom_at, broker, "approvals")
            assert f"{request['id']}" in listed.stdout and "sample.guarded" in listed.stdout
            assert not marker.exists()  # nothing ran yet
            done = await asyncio.to_thread(loom_at, broker, "approve", str(request["id"]))
            assert done.returncode == 0, done.stderr
            assert await asyncio.wait_for(call, 10) == "done"
            assert await client.approvals() == []

    asyncio.run(body())
    assert marker.exists()
    assert progress and progress[0]["approval"] == "pending"


def test_a_denied_call_never_reaches_the_worker(
    spawn: Callable[..., Proc], endpoint: str, tmp_path: Path
) -> None:
    """`loom deny ID --reason` answers DENIED with the reason; the tool never ran, and a
    second decision on the same id is an error."""
    broker = approval_mesh(spawn, endpoint)
    start_worker(spawn, broker, "w1")
    marker = tmp_path / "ran"

    async def body() -> None:
        async with await ToolClient.connect(broker, name="agent") as client:
            call = asyncio.ensure_future(client.call("sample.guarded", {"marker": str(marker)}))
            [request] = await wait_pending(client)
            denied = await asyncio.to_thread(
                loom_at, broker, "deny", str(request["id"]), "--reason", "not today"
            )
            assert denied.returncode == 0, denied.stderr
            with pytest.raises(ToolDeniedError, match="not today"):
                await asyncio.wait_for(call, 10)
            with pytest.raises(ApprovalError):
                await client.decide(request["id"], True)

    asyncio.run(body())
    assert not marker.exists()
    again = loom_at(broker, "approve", "999")
    assert again.returncode == 1 and "no call waits" in again.stderr


def test_no_decision_in_time_means_denied(
    spawn: Callable[..., Proc], endpoint: str, tmp_path: Path
) -> None:
    """With --approval-timeout 0.5 and nobody answering, the call is DENIED and the tool
    never runs; the decision is published as `$approval.decided`."""
    broker = approval_mesh(spawn, endpoint, "--approval-timeout", "0.5")
    start_worker(spawn, broker, "w1")
    marker = tmp_path / "ran"
    decided: list[Event] = []

    async def body() -> None:
        watcher = Actor(name="watcher", broker=broker)
        await watcher.subscribe("$approval.decided.**", decided.append)
        await watcher.start()
        try:
            async with await ToolClient.connect(broker, name="agent") as client:
                with pytest.raises(ToolDeniedError, match="no approver answered"):
                    await client.call("sample.guarded", {"marker": str(marker)})
            await until(lambda: decided)
        finally:
            await watcher.stop()

    asyncio.run(body())
    assert not marker.exists()
    assert decided[0].data["approved"] is False and decided[0].data["by"] == "nobody"


def test_an_approver_actor_decides_by_the_arguments(
    spawn: Callable[..., Proc], endpoint: str, tmp_path: Path
) -> None:
    """An actor subscribed to `$approval.request.**` approves calls inside a directory and
    denies the rest: one call runs, the other is DENIED with the actor's reason."""
    broker = approval_mesh(spawn, endpoint)
    start_worker(spawn, broker, "w1")
    allowed, refused = tmp_path / "ok" / "ran", tmp_path / "ran"
    allowed.parent.mkdir()

    class Approver(Actor):
        async def on_start(self) -> None:
            await self.subscribe("$approval.request.**", self.judge)

        async def judge(self, event: Event) -> None:
            request = event.data
            if request["args"]["marker"].startswith(str(allowed.parent)):
                await self.approve(request["id"])
            else:
                await self.deny(request["id"], reason="outside ok/")

    async def body() -> None:
        approver = Approver(name="approver", broker=broker)
        await approver.start()
        try:
            async with await ToolClient.connect(broker, name="agent") as client:
                assert await client.call("sample.guarded", {"marker": str(allowed)}) == "done"
                with pytest.raises(ToolDeniedError, match="denied by approver: outside ok/"):
                    await client.call("sample.guarded", {"marker": str(refused)})
        finally:
            await approver.stop()

    asyncio.run(body())
    assert allowed.exists() and not refused.exists()


def test_the_broker_can_require_approval_for_any_tool(
    spawn: Callable[..., Proc], endpoint: str
) -> None:
    """`--require-approval 'sample.a*'` holds calls to sample.add although its worker
    does not ask for approval; the directory shows the tool needs it."""
    broker = approval_mesh(spawn, endpoint, "--require-approval", "sample.a*")
    start_worker(spawn, broker, "w1")

    async def body() -> None:
        async with await ToolClient.connect(broker, name="agent") as client:
            info = (await client.directory()).tool("sample.add")
            assert info is not None and info.approval
            call = asyncio.ensure_future(client.call("sample.add", {"a": 1, "b": 2}))
            [request] = await wait_pending(client)
            async with await ToolClient.connect(broker, name="operator") as operator:
                await operator.decide(request["id"], True)
            assert await asyncio.wait_for(call, 10) == 3
            assert await client.call("sample.work", {"ms": 1}) > 0  # not matched: no wait

    asyncio.run(body())


def test_a_caller_cannot_approve_its_own_call(
    spawn: Callable[..., Proc], endpoint: str, tmp_path: Path
) -> None:
    """The caller learns its request's id from the pending progress, but APPROVE from
    the caller's own identity is refused, as is an id that is not an integer; the
    decision of another peer is recorded under the name the broker knows it by."""
    broker = approval_mesh(spawn, endpoint)
    start_worker(spawn, broker, "w1")
    decided: list[Event] = []

    async def body() -> None:
        watcher = Actor(name="watcher", broker=broker)
        await watcher.subscribe("$approval.decided.**", decided.append)
        await watcher.start()
        try:
            async with await ToolClient.connect(broker, name="agent") as client:
                call = asyncio.ensure_future(
                    client.call("sample.guarded", {"marker": str(tmp_path / "x")})
                )
                [request] = await wait_pending(client)
                with pytest.raises(ApprovalError, match="its own call"):
                    await client.decide(request["id"], True)
                async with await ToolClient.connect(broker, name="operator") as other:
                    with pytest.raises(MalformedRequestError):  # an id must be an int
                        await other.decide(True, True)  # type: ignore[arg-type]
                    await other.decide(request["id"], True, by="the CEO")
                assert await asyncio.wait_for(call, 10) == "done"
            await until(lambda: decided)
        finally:
            await watcher.stop()

    asyncio.run(body())
    assert decided[0].data["by"] == "operator"  # not the name the client claimed


def test_a_cancelled_caller_withdraws_its_request(
    spawn: Callable[..., Proc], endpoint: str, tmp_path: Path
) -> None:
    """A caller that gives up while its call waits: the request disappears."""
    broker = approval_mesh(spawn, endpoint)
    start_worker(spawn, broker, "w1")

    async def body() -> None:
        async with await ToolClient.connect(broker, name="agent") as client:
            call = asyncio.ensure_future(
                client.call("sample.guarded", {"marker": str(tmp_path / "x")})
            )
            await wait_pending(client)
            call.cancel()

            async def withdrawn() -> bool:
                return not await client.approvals()

            await eventually(withdrawn)

    asyncio.run(body())


def test_the_worker_refuses_an_unapproved_call_whatever_routed_it(
    spawn: Callable[..., Proc], short_tmp: Path, tmp_path: Path
) -> None:
    """A raw ROUTER posing as a broker that skips approval sends CALLs straight to the
    worker: without an approver in the CALL the worker answers DENIED and runs nothing;
    with one, it runs the tool."""
    import zmq

    from loom.protocol import (
        CALL,
        FAIL,
        HELLO,
        READY,
        RESULT,
        decode_control,
        decode_failure,
        encode_control,
        encode_value,
    )

    address = f"ipc://{short_tmp}/fake-broker"
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.bind(address)
    router.setsockopt(zmq.RCVTIMEO, 10_000)
    try:
        spawn(
            sys.executable,
            "-m",
            "loom.cli.main",
            "worker",
            str(Path(__file__).parent.parent / "workers" / "sample.py"),
            "--broker",
            address,
            "--name",
            "w1",
            "--key",
            "none",  # a stand-in broker without CURVE
        )
        identity = b""
        for expected in (HELLO, READY):
            identity, *frames = router.recv_multipart()
            command, body = decode_control(frames)
            assert command == expected
            answer = {"rid": body["rid"], "pub": "ipc://unused", "sub": "ipc://unused"}
            router.send_multipart([identity, *encode_control(expected, answer)])
        marker = tmp_path / "ran"
        args = encode_value({"marker": str(marker)})
        meta = encode_value((1, "sample.guarded", 5.0, None))
        router.send_multipart([identity, CALL, meta, args])
        while True:
            reply = router.recv_multipart()
            if reply[1] in (FAIL, RESULT):
                break
        assert reply[1] == FAIL and decode_failure(reply[3])["code"] == "DENIED"
        assert not marker.exists()
        approved = encode_value((2, "sample.guarded", 5.0, None, "operator"))
        router.send_multipart([identity, CALL, approved, args])
        while True:
            reply = router.recv_multipart()
            if reply[1] in (FAIL, RESULT):
                break
        assert reply[1] == RESULT and marker.exists()
    finally:
        router.close(linger=0)
        context.term()
