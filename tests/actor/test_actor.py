"""Actors against a real broker process: request/reply, errors, first messages, limits."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import ACTORS, Proc, broker_stats, spawn_actor, until

from loom import Actor, Event, RemoteError, RequestTimeoutError, on
from loom.errors import ClosedError, EncodeError, HeaderError, PayloadTooLargeError, TopicError


class Collector(Actor):
    """Keeps every event it is given through ``subscribe``."""

    def __init__(self, broker: str, name: str = "collector") -> None:
        super().__init__(name=name, broker=broker)
        self.events: list[Event] = []

    def keep(self, event: Event) -> None:
        self.events.append(event)


def test_request_reply_across_processes(broker: str, spawn: Callable[..., Proc]) -> None:
    """A request reaches an actor in another process; its return value is the reply."""
    spawn_actor(spawn, "echo", broker)

    async def body() -> None:
        client = Collector(broker, "client")
        await client.subscribe("pong.*", client.keep)
        await client.start()
        try:
            reply = await client.request("ping.x", {"n": 1}, timeout=5)
            assert reply == {"ok": True, "data": {"n": 1}, "from": "echo"}
            pong = await until(lambda: client.events)
            assert pong[0].topic == "pong.x" and pong[0].sender == "echo"
            assert pong[0].data == {"n": 1}
        finally:
            await client.stop()

    asyncio.run(body())


def test_request_timeout_is_typed(broker: str) -> None:
    """With no responder, request raises RequestTimeoutError (a TimeoutError) on time."""

    async def body() -> None:
        client = Actor(name="client", broker=broker)
        await client.start()
        try:
            started = time.monotonic()
            with pytest.raises(RequestTimeoutError) as info:
                await client.request("nobody.home", 1, timeout=0.3)
            elapsed = time.monotonic() - started
            assert isinstance(info.value, TimeoutError)
            assert 0.3 <= elapsed < 5.0  # generous: a shared 2-core machine
        finally:
            await client.stop()

    asyncio.run(body())


def test_handler_error_is_logged_counted_and_answered(
    broker: str, spawn: Callable[..., Proc]
) -> None:
    """A failing handler answers the requester with RemoteError; the actor keeps serving."""
    echo = spawn_actor(spawn, "echo", broker)

    async def body() -> None:
        client = Actor(name="client", broker=broker)
        await client.start()
        try:
            with pytest.raises(RemoteError) as info:
                await client.request("fail.now", "boom", timeout=5)
            assert info.value.type_name == "ValueError"
            assert "asked to fail: boom" in info.value.message
            assert (await client.request("ping.after", 2, timeout=5))["ok"] is True
            stats = await client.request("echo.stats", timeout=5)
            assert stats["errors"] == 1
        finally:
            await client.stop()

    asyncio.run(body())
    echo.wait_line("handler failed")
    assert "Traceback" in echo.output and "ValueError: asked to fail: boom" in echo.output


def test_sync_and_async_handlers_and_explicit_reply(broker: str) -> None:
    """Sync handlers, async handlers and an explicit reply() all answer requests."""

    class Both(Actor):
        @on("sync.*")
        def sync_handler(self, event: Event) -> str:
            return "sync:" + event.topic

        @on("async.*")
        async def async_handler(self, event: Event) -> None:
            await self.reply(event, "async:" + event.topic)

    async def body() -> None:
        server, client = Both(name="both", broker=broker), Actor(name="c", broker=broker)
        await server.start()
        await client.start()
        try:
            assert await client.request("sync.a", timeout=5) == "sync:sync.a"
            assert await client.request("async.b", timeout=5) == "async:async.b"
        finally:
            await client.stop()
            await server.stop()

    asyncio.run(body())


def test_bad_emits_raise_at_the_call_site(broker: str) -> None:
    """Un-encodable, oversized, badly addressed or too-early emits raise typed errors."""

    async def body() -> None:
        actor = Actor(name="a", broker=broker)
        with pytest.raises(ClosedError):
            await actor.emit("x.y", 1)
        await actor.start()
        try:
            with pytest.raises(EncodeError):
                await actor.emit("x.y", {"when": object()})
            with pytest.raises(PayloadTooLargeError):
                await actor.emit("x.y", b"x" * (2 << 20))
            with pytest.raises(TopicError):
                await actor.emit("x..y", 1)
            await actor.emit("x.y", 1)  # the actor is still fine
        finally:
            await actor.stop()
        with pytest.raises(ClosedError):
            await actor.emit("x.y", 1)

    asyncio.run(body())


def test_first_message_after_start_is_never_lost(broker: str) -> None:
    """Started 100 times in a row, a fresh actor gets an event published right after."""

    async def body() -> None:
        publisher = Actor(name="publisher", broker=broker)
        await publisher.start()
        try:
            for i in range(100):
                fresh = Collector(broker, f"fresh{i}")
                await fresh.subscribe(f"first.{i}.*", fresh.keep)
                await fresh.start()
                await publisher.emit(f"first.{i}.go", i)
                got = await until(lambda f=fresh: f.events, timeout=5)  # type: ignore[misc]
                assert got[0].data == i
                await fresh.stop()
        finally:
            await publisher.stop()

    asyncio.run(body())


@pytest.mark.timeout(120)
def test_first_message_after_on_start_in_a_new_process(
    broker: str, spawn: Callable[..., Proc]
) -> None:
    """An actor process announcing itself from on_start hears what is sent in answer."""

    async def body() -> None:
        watcher = Collector(broker, "watcher")
        await watcher.subscribe("started.*", watcher.keep)
        await watcher.subscribe("heard.*", watcher.keep)
        await watcher.start()
        try:
            for i in range(8):
                name = f"s{i}"
                proc = spawn_actor(spawn, "startup", broker, name)
                await until(lambda n=name: any(e.topic == f"started.{n}" for e in watcher.events))
                await watcher.emit(f"first.{name}", i)  # at once: no settling delay
                heard = await until(
                    lambda n=name: [e for e in watcher.events if e.topic == f"heard.{n}"]
                )
                assert heard[0].data == i
                assert proc.stop() == 0
        finally:
            await watcher.stop()

    asyncio.run(body())


def test_dollar_topics_need_a_literal_prefix(broker: str) -> None:
    """`**` does not see `$` topics (probes, inboxes); `$x.**` does."""

    async def body() -> None:
        everything, system = Collector(broker, "all"), Collector(broker, "sys")
        await everything.subscribe("**", everything.keep)
        await system.subscribe("$x.**", system.keep)
        await everything.start()
        await system.start()
        await everything.emit("$x.one", 1)
        await everything.emit("plain", 2)
        await until(lambda: system.events and everything.events)
        assert [e.topic for e in system.events] == ["$x.one"]
        assert [e.topic for e in everything.events] == ["plain"]
        await everything.stop()
        await system.stop()

    asyncio.run(body())


def test_handler_loops_stop_at_the_hop_limit(broker: str) -> None:
    """Two actors bouncing an event forever are stopped by the hop limit, and survive."""

    class Bouncer(Actor):
        def __init__(self, broker: str, name: str, out: str) -> None:
            super().__init__(name=name, broker=broker)
            self.out = out
            self.seen = 0

        @on("bounce.*")
        async def bounce(self, event: Event) -> None:
            if event.topic != self.out:
                self.seen += 1
                await self.emit(self.out, event.data)

        @on("ask")
        def ask(self, event: Event) -> int:
            return self.seen

    async def body() -> None:
        a, b = Bouncer(broker, "a", "bounce.a"), Bouncer(broker, "b", "bounce.b")
        await a.start()
        await b.start()
        try:
            await a.emit("bounce.a", "ball")
            await until(lambda: a.stats.errors + b.stats.errors >= 1)
            assert a.seen + b.seen == 33  # messages of hops 0..32 handled; hop 33 refused
            assert await a.request("ask", timeout=5) in (a.seen, b.seen)
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(body())


def test_stop_fails_pending_requests_with_closed_error(broker: str) -> None:
    """Stopping an actor ends its pending requests with ClosedError, not a hang."""

    async def body() -> None:
        actor = Actor(name="a", broker=broker)
        await actor.start()
        pending = asyncio.ensure_future(actor.request("nobody", timeout=30))
        await asyncio.sleep(0)
        await until(lambda: actor._pending)
        await actor.stop()
        with pytest.raises(ClosedError):
            await pending

    asyncio.run(body())


def test_stop_lets_the_handler_in_progress_finish(broker: str) -> None:
    """stop() waits for the running handler (which may still emit), within the grace."""

    class Slow(Actor):
        busy = False

        @on("work.*")
        async def work(self, event: Event) -> None:
            self.busy = True
            await self.release.wait()  # held until stop() is under way
            await self.emit("work.done", event.data)

    async def body() -> None:
        slow, watcher = Slow(name="slow", broker=broker), Collector(broker)
        slow.release = asyncio.Event()
        await watcher.subscribe("work.done", watcher.keep)
        await slow.start()
        await watcher.start()
        await watcher.emit("work.go", 7)
        await until(lambda: slow.busy)
        stopping = asyncio.ensure_future(slow.stop())
        await until(lambda: slow._state == "stopping")
        slow.release.set()
        await stopping
        done = await until(lambda: watcher.events)
        assert done[0].data == 7
        await watcher.stop()

    asyncio.run(body())


def test_on_start_failure_propagates_and_cleans_up(broker: str) -> None:
    """An on_start that raises makes start() raise; the actor is not left running."""

    class Broken(Actor):
        async def on_start(self) -> None:
            raise RuntimeError("cannot start")

    async def body() -> None:
        actor = Broken(name="broken", broker=broker)
        with pytest.raises(RuntimeError, match="cannot start"):
            await actor.start()
        with pytest.raises(ClosedError):
            await actor.emit("x.y", 1)
        await actor.stop()  # harmless

    asyncio.run(body())


def test_a_handler_may_stop_its_own_actor(broker: str) -> None:
    """A handler calling `await self.stop()` stops the actor cleanly."""

    class Quitter(Actor):
        @on("quit")
        async def quit(self, event: Event) -> None:
            await self.stop()

    async def body() -> None:
        quitter, other = Quitter(name="quitter", broker=broker), Actor(name="o", broker=broker)
        await quitter.start()
        await other.start()
        await other.emit("quit")
        await until(lambda: not quitter._running)
        with pytest.raises(ClosedError):
            await quitter.emit("x.y")
        await other.stop()

    asyncio.run(body())


def test_requests_from_handlers_work_while_the_mailbox_is_full(broker: str) -> None:
    """Replies travel on their own socket: a handler's request is answered even when the
    mailbox is full and event reading is paused."""

    class Asker(Actor):
        answers: list[Any]

        @on("job.*")
        async def job(self, event: Event) -> None:
            self.answers.append(await self.request("calc.double", event.data, timeout=5))

    class Doubler(Actor):
        @on("calc.double")
        def double(self, event: Event) -> int:
            return int(event.data) * 2

    async def body() -> list[Any]:
        asker = Asker(name="asker", broker=broker, mailbox_size=10)
        asker.answers = []
        doubler, sender = Doubler(name="doubler", broker=broker), Actor(name="s", broker=broker)
        for actor in (asker, doubler, sender):
            await actor.start()
        for i in range(40):
            await sender.emit(f"job.{i}", i)
        await until(lambda: len(asker.answers) == 40, timeout=30)
        for actor in (sender, doubler, asker):
            await actor.stop()
        return asker.answers

    assert asyncio.run(body()) == [2 * i for i in range(40)]


def test_stop_during_start_fails_start(broker: str) -> None:
    """stop() while start() confirms, or while on_start runs, makes start() raise
    ClosedError; the actor is not left half-running."""

    class SlowStart(Actor):
        in_on_start = False

        async def on_start(self) -> None:
            self.in_on_start = True
            await self.release.wait()  # held until stop() has been called

    async def stopped_while(actor: Actor, phase: Callable[[], bool]) -> None:
        starting = asyncio.ensure_future(actor.start())
        deadline = time.monotonic() + 5
        while not phase() and time.monotonic() < deadline:
            await asyncio.sleep(0)  # every loop turn: catch the phase as it begins
        stopping = asyncio.ensure_future(actor.stop())
        await asyncio.sleep(0)  # stop() marks the start aborted before start moves on
        assert actor._abort
        if isinstance(actor, SlowStart):
            actor.release.set()
        await stopping
        with pytest.raises(ClosedError):
            await starting
        assert not actor._running
        with pytest.raises(ClosedError):
            await actor.emit("x.y")

    async def body() -> None:
        confirming = Actor(name="confirming", broker=broker)
        await stopped_while(confirming, lambda: confirming._running)
        slow = SlowStart(name="slow", broker=broker)
        slow.release = asyncio.Event()
        await stopped_while(slow, lambda: slow.in_on_start)

    asyncio.run(body())


def test_a_shared_asyncio_context_works(broker: str) -> None:
    """An actor given a zmq.asyncio context (shared with the application) works."""
    import zmq.asyncio

    async def body() -> Any:
        context = zmq.asyncio.Context()
        a, b = Actor(name="a", broker=broker, context=context), Actor(name="b", broker=broker)
        await b.subscribe("shared.*", lambda e: e.data)
        await a.start()
        await b.start()
        try:
            return await a.request("shared.x", {1: "int keys survive"}, timeout=5)
        finally:
            await a.stop()
            await b.stop()
            context.term()

    assert asyncio.run(body()) == {1: "int keys survive"}


def test_subscribing_under_load_loses_no_wakeup(broker: str) -> None:
    """subscribe() while events pour in: every event is still handled. (zmq's fd is
    edge-triggered and a subscribe/unsubscribe can swallow the edge: the receiver must
    look again after each one.)"""

    async def body() -> int:
        got = 0

        def count(event: Event) -> None:
            nonlocal got
            got += 1

        sink, source = Actor(name="sink", broker=broker), Actor(name="source", broker=broker)
        await sink.subscribe("flood.*", count)
        await sink.start()
        await source.start()

        async def flood() -> None:
            for i in range(20_000):
                await source.emit("flood.x", i)

        flooding = asyncio.ensure_future(flood())
        for i in range(30):
            await sink.subscribe(f"other.{i}", count)
        await flooding
        await until(lambda: got == 20_000, timeout=20)
        await source.stop()
        await sink.stop()
        return got

    for _ in range(3):
        assert asyncio.run(body()) == 20_000


def test_stop_right_after_emitting_loses_nothing(broker: str) -> None:
    """Everything a process emits before stop() arrives, although libzmq may drop a
    closing PUB/XPUB socket's queue: stop() flushes through the broker first."""
    script = str(ACTORS / "burst.py")

    async def body() -> list[int]:
        counts: list[int] = []
        got: list[int] = []
        listener = Actor(name="listener", broker=broker)
        await listener.subscribe("burst.*", lambda event: got.append(event.data))
        await listener.start()
        for round_ in range(3):
            topic = f"burst.r{round_}"
            proc = await asyncio.create_subprocess_exec(
                sys.executable, script, broker, "50000", topic
            )
            assert await asyncio.wait_for(proc.wait(), 60) == 0
            deadline = time.monotonic() + 10
            while len(got) < 50_000 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            counts.append(len(got))
            got.clear()
        await listener.stop()
        return counts

    assert asyncio.run(body()) == [50_000] * 3


def test_cancelled_stop_still_stops_and_the_actor_restarts(broker: str) -> None:
    """A caller giving up on stop() does not cancel the stop; the actor can start again."""

    class SlowStop(Actor):
        @on("ping")
        def ping(self, event: Event) -> str:
            return "pong"

        async def on_stop(self) -> None:
            await self.release.wait()  # held until the first caller gave up

    async def body() -> Any:
        actor, client = SlowStop(name="slowstop", broker=broker), Actor(name="c", broker=broker)
        actor.release = asyncio.Event()
        await actor.start()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(actor.stop(), 0.1)
        actor.release.set()
        await actor.stop()  # joins the stop in progress
        assert actor._state == "idle" and actor._link is None
        await actor.start()
        await client.start()
        try:
            return await client.request("ping", timeout=5)
        finally:
            await client.stop()
            await actor.stop()

    assert asyncio.run(body()) == "pong"


def test_concurrent_starts_start_once(broker: str) -> None:
    """Two start() calls at once open one link (one HELLO at the broker)."""

    async def body() -> None:
        actor = Actor(name="twice", broker=broker)
        await asyncio.gather(actor.start(), actor.start())
        peers = await asyncio.to_thread(broker_stats, broker)
        assert [p["name"] for p in peers["peers"]].count("twice") == 1
        await actor.stop()

    asyncio.run(body())


def test_one_event_in_sixteen_has_its_handling_timed(broker: str) -> None:
    """The first event handled is timed, then one in 16: 33 events give 3 samples, each
    at least as long as the handler slept."""

    async def run() -> list[int]:
        sink = Collector(broker, name="timed")

        def slow(event: Event) -> None:
            busy_until = time.perf_counter() + 0.002  # the handler's own work, measured
            while time.perf_counter() < busy_until:
                pass
            sink.keep(event)

        await sink.subscribe("timed.*", slow)
        sender = Actor(name="sender", broker=broker)
        await sink.start()
        await sender.start()
        try:
            for i in range(33):
                await sender.emit(f"timed.{i}", i)
            await until(lambda: len(sink.events) == 33, timeout=10)
        finally:
            await sender.stop()
            await sink.stop()
        latency = sink.stats.handler_seconds
        assert latency.total >= 3 * 0.002
        return latency.counts

    counts = asyncio.run(run())
    assert sum(counts) == 3


def test_header_fields_are_checked_where_they_are_given(broker: str) -> None:
    """A name or thread id the protocol would refuse fails at once, with HeaderError,
    instead of leaving the message to be dropped on its way."""
    with pytest.raises(HeaderError):
        Actor(name="n" * 300, broker=broker)

    async def body() -> None:
        actor = Actor(name="short", broker=broker)
        await actor.start()
        try:
            with pytest.raises(HeaderError):
                await actor.emit("t.x", 1, thread="t" * 300)
            await actor.emit("t.x", 1, thread="t" * 256)
        finally:
            await actor.stop()

    asyncio.run(body())


def test_a_handler_raising_cancelled_error_does_not_end_dispatch(broker: str) -> None:
    """CancelledError out of a handler (its own, not the actor stopping) is a failure like
    any other: counted, answered as a RemoteError, and the next event is handled."""
    got: list[str] = []

    async def cancelled(event: Event) -> None:
        raise asyncio.CancelledError

    def also_sync(event: Event) -> None:
        raise asyncio.CancelledError

    async def body() -> Exception:
        worker = Actor(name="fragile", broker=broker)
        await worker.subscribe("fragile.async", cancelled)
        await worker.subscribe("fragile.sync", also_sync)
        await worker.subscribe("fragile.ok", lambda event: got.append(event.data))
        await worker.start()
        asker = Actor(name="asker", broker=broker)
        await asker.start()
        try:
            with pytest.raises(RemoteError) as info:
                await asker.request("fragile.async", 1, timeout=5)
            await asker.emit("fragile.sync", 2)
            await asker.emit("fragile.ok", 3)
            await until(lambda: got)
            assert worker.stats.errors == 2
            return info.value
        finally:
            await asker.stop()
            await worker.stop()

    error = asyncio.run(body())
    assert error.type_name == "CancelledError" and got == [3]
