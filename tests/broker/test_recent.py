"""RECENT: what passed through the broker since a reader's last look (the dashboard's feed)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clients.ready import curve
from conftest import Proc, broker_stats, loom_at, start_broker, start_worker, wait_for

from loom import Actor
from loom.errors import RefusedError
from loom.protocol import ERROR_COMMAND, RECENT, TRACE
from loom.session import ask


def recent(broker: str, **body: Any) -> tuple[bytes, dict[str, Any]]:
    try:
        return RECENT, asyncio.run(ask(broker, RECENT, {"calls_after": -1, **body}))
    except RefusedError as exc:
        return ERROR_COMMAND, {"code": exc.code, "message": str(exc)}


def publish(broker: str, topics: list[str]) -> None:
    async def run() -> None:
        actor = Actor(name="pub", broker=broker)
        await actor.start()
        try:
            for topic in topics:
                await actor.emit(topic, {"n": 1})
        finally:
            await actor.stop()

    asyncio.run(run())


def test_messages_come_once_after_the_cursor_with_a_gap_when_more_came(mesh: str) -> None:
    """A reader gets the messages numbered after the last it saw, none twice; with a
    limit smaller than what came, the newest arrive and `gap` says some were skipped."""
    publish(mesh, [f"feed.a.{i}" for i in range(5)])
    command, first = recent(mesh, calls_after=-1)
    assert command == RECENT, first
    mine = [m for m in first["messages"] if m["topic"].startswith("feed.")]
    assert [m["topic"] for m in mine] == [f"feed.a.{i}" for i in range(5)]
    assert all(m["sender"] == "pub" and m["kind"] == 0 and m["trace"] for m in mine)
    assert [m["seq"] for m in first["messages"]] == list(range(first["messages_seen"]))
    last = first["messages_seen"] - 1
    publish(mesh, [f"feed.b.{i}" for i in range(5)])
    _, second = recent(mesh, after=last, calls_after=-1)
    feed = [m["topic"] for m in second["messages"] if m["topic"].startswith("feed.")]
    assert feed == [f"feed.b.{i}" for i in range(5)] and not second["gap"]
    assert second["messages"][0]["seq"] == last + 1
    _, limited = recent(mesh, after=last, calls_after=-1, limit=2)
    assert len(limited["messages"]) == 2 and limited["gap"]
    assert limited["messages"][-1] == second["messages"][-1]  # the newest, oldest first
    _, none = recent(mesh, after=second["messages_seen"] - 1, calls_after=-1)
    assert none["messages"] == [] and not none["gap"]


def raw_publisher(broker: str) -> tuple[Any, Any]:
    """A raw PUB socket connected to the broker's publishing endpoint."""
    import zmq

    from loom.protocol import HELLO, VERSION

    answer = asyncio.run(ask(broker, HELLO, {"version": VERSION, "name": "raw"}))
    context = zmq.Context()
    pub = curve(context.socket(zmq.PUB))
    pub.connect(answer["pub"])
    return context, pub


def test_peers_ids_cannot_hide_or_bloat_what_a_reader_sees(mesh: str) -> None:
    """A message that repeats an earlier id does not hide those between (the cursor is
    the broker's own numbering), and one with a huge parent id is neither recorded (it
    would fill the buffer and every answer) nor forwarded (no peer would read it)."""
    from conftest import make_header

    context, pub = raw_publisher(mesh)
    try:
        same = b"\x07" * 16

        def send(topic: bytes, **fields: object) -> None:
            pub.send_multipart([topic, make_header(**fields), b"\xc0"])

        def arrived() -> bool:  # a slow joiner may miss the first: send until seen
            send(b"raw.first", id=same)
            return any(m["topic"] == "raw.first" for m in recent(mesh)[1]["messages"])

        wait_for(arrived, timeout=20, interval=0.1)
        mark = recent(mesh)[1]["messages_seen"] - 1
        send(b"raw.between", id=b"\x08" * 16)
        send(b"raw.parent", id=b"\x09" * 16, parent_id=b"\x01" * 100_000)
        send(b"raw.again", id=same)
        topics = wait_for(
            lambda: (
                (t := [m["topic"] for m in recent(mesh, after=mark)[1]["messages"]])
                and "raw.again" in t
                and t
            ),
            timeout=20,
        )
        assert topics == ["raw.between", "raw.again"]
        parent = broker_stats(mesh)["topics"]["raw.parent"]
        assert parent["malformed"] == 1 and parent["forwarded"] == 0
    finally:
        pub.close(linger=0)
        context.term()


def test_every_answered_call_is_recorded_with_its_worker_and_outcome(
    mesh: str, spawn: Callable[..., Proc]
) -> None:
    """Calls outside any trace are recorded too, numbered, with the worker that ran them
    and the failure code; `calls_after` skips those already seen."""
    start_worker(spawn, mesh, "w1")
    for args in (["sample.add", '{"a": 1}'], ["sample.boom", '{"message": "no"}']):
        loom_at(mesh, "call", *args)
    _, answer = recent(mesh, calls_after=-1)
    calls = answer["calls"]
    assert [(c["tool"], c["worker"], c["outcome"]) for c in calls] == [
        ("sample.add", "w1", "ok"),
        ("sample.boom", "w1", "TOOL_ERROR"),
    ]
    assert calls[0]["trace"] is None and calls[0]["ended"] >= calls[0]["started"]
    assert answer["calls_seen"] == 2
    _, later = recent(mesh, calls_after=calls[0]["seq"])
    assert [c["tool"] for c in later["calls"]] == ["sample.boom"]


def test_a_malformed_recent_gets_an_error_and_the_broker_goes_on(mesh: str) -> None:
    """A cursor that is not an integer: ERROR MALFORMED; a bad limit is the maximum; the
    broker still answers."""
    for bad in ({"calls_after": "x"}, {"after": "00ff"}, {"after": 1.5}):
        command, error = recent(mesh, **bad)
        assert command == ERROR_COMMAND and error["code"] == "MALFORMED", bad
    publish(mesh, ["after.bad"])
    command, body = recent(mesh, after=None, limit=-5)  # nil: from the start; bad limit: max
    assert command == RECENT and "after.bad" in [m["topic"] for m in body["messages"]]


def test_durable_events_and_the_brokers_own_are_in_the_buffer(
    spawn: Callable[..., Proc], endpoint: str, short_tmp: Path
) -> None:
    """A reliable (logged) event and the broker's `$sys` events reach RECENT and TRACE,
    like any other message."""
    start_broker(spawn, endpoint, "--data-dir", str(short_tmp / "data"))

    async def run() -> None:
        actor = Actor(name="auditor", broker=endpoint)
        await actor.start()
        try:
            await actor.emit("orders.created", {"id": 1}, qos="reliable")
        finally:
            await actor.stop()

    asyncio.run(run())
    _, answer = recent(endpoint, calls_after=-1)
    by_topic = {m["topic"]: m for m in answer["messages"]}
    assert by_topic["orders.created"]["sender"] == "auditor"
    assert by_topic["$sys.actor.joined"]["sender"] == "loom-broker"
    found = asyncio.run(ask(endpoint, TRACE, {"trace": by_topic["orders.created"]["trace"]}))
    assert [m["topic"] for m in found["messages"]] == ["orders.created"]
