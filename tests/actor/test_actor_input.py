"""An actor behind a broker that does not validate still drops bad input and survives.

The "broker" here is real sockets: a ROUTER answering HELLO and the C `zmq.proxy`
between an XSUB and an XPUB, which forwards whatever it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from conftest import ill_typed_headers, make_header, until

from loom import Actor, Event
from loom.errors import ProtocolError
from loom.protocol import HEARTBEAT, HELLO, VERSION, decode_control, encode_control


class Permissive:
    """A non-validating stand-in broker: HELLO plus the C proxy."""

    def __init__(self, base: Path) -> None:
        self.control = f"ipc://{base}/ctl"
        self.pub, self.sub = f"ipc://{base}/pub", f"ipc://{base}/sub"
        self.announce_pub = self.pub
        self.ctx: zmq.Context[Any] = zmq.Context()
        self._threads = [
            threading.Thread(target=self._proxy, daemon=True),
            threading.Thread(target=self._hello, daemon=True),
        ]
        self._ready = threading.Barrier(3)
        for thread in self._threads:
            thread.start()
        self._ready.wait(5)

    def _proxy(self) -> None:
        xsub, xpub = self.ctx.socket(zmq.XSUB), self.ctx.socket(zmq.XPUB)
        xsub.bind(self.pub)
        xpub.bind(self.sub)
        self._ready.wait(5)
        try:
            zmq.proxy(xsub, xpub)
        except zmq.ContextTerminated:
            xsub.close(0)
            xpub.close(0)

    def _hello(self) -> None:
        router = self.ctx.socket(zmq.ROUTER)
        router.bind(self.control)
        self._ready.wait(5)
        try:
            while True:
                identity, *frames = router.recv_multipart()
                command, asked = decode_control(frames)
                if command != HELLO:  # heartbeats, BYE: answered as a broker would
                    if command == HEARTBEAT:
                        router.send_multipart([identity, *encode_control(HEARTBEAT, {})])
                    continue
                body = {
                    "version": VERSION,
                    "pub": self.announce_pub,
                    "sub": self.sub,
                    "max_payload": 1 << 20,
                    "rid": asked.get("rid"),
                }
                router.send_multipart([identity, *encode_control(HELLO, body)])
        except zmq.ContextTerminated:
            router.close(0)

    def close(self) -> None:
        self.ctx.term()


@pytest.fixture
def permissive(short_tmp: Path) -> Iterator[Permissive]:
    broker = Permissive(short_tmp)
    yield broker
    broker.close()


@contextlib.asynccontextmanager
async def sink_and_raw_publisher(
    permissive: Permissive, pattern: str
) -> AsyncIterator[tuple[Actor, list[Event], zmq.Socket[bytes]]]:
    """A started actor keeping what `pattern` matches, and a raw XPUB publisher that
    already holds the actor's subscription (forwarded upstream by the C proxy); both are
    closed on exit."""
    got: list[Event] = []
    sink = Actor(name="sink", broker=permissive.control, key="none")
    await sink.subscribe(pattern, got.append)
    await sink.start()
    raw = permissive.ctx.socket(zmq.XPUB)
    raw.connect(permissive.pub)
    try:
        assert raw.poll(5000), "no subscription reached the raw publisher"
        while raw.poll(200):
            raw.recv()
        yield sink, got, raw
    finally:
        raw.close(0)
        await sink.stop()


def test_actor_drops_malformed_messages_and_keeps_serving(permissive: Permissive) -> None:
    """Wrong frame counts, bad headers, other versions, bad payloads and non-UTF-8 topics
    are dropped and counted per reason; a good message after them is handled."""

    async def body() -> tuple[Actor, list[Event]]:
        async with sink_and_raw_publisher(permissive, "bad.*") as (sink, got, raw):
            good, one = make_header(), msgpack.packb(1)
            for frames in [
                [b"bad.a"],
                [b"bad.a", good],
                [b"bad.a", good, one, b"extra"],
                [b"bad.a", b"\xc1", one],
                [b"bad.a", make_header(version=9), one],
                [b"bad.a", make_header(sender=5), one],
                [b"bad.a", good, b"\xc1"],
                [b"bad.\xff", good, one],
                [b"bad.ok", good, msgpack.packb("fine")],
            ]:
                raw.send_multipart(frames)
            await until(lambda: got)
        return sink, got

    sink, got = asyncio.run(body())
    assert [(e.topic, e.data) for e in got] == [("bad.ok", "fine")]
    assert sink.stats.drops.counts == {
        "frames": 3,
        "header": 2,
        "version": 1,
        "payload": 1,
        "topic": 1,
    }


def test_int_keys_and_unknown_kinds(permissive: Permissive) -> None:
    """Maps with int keys arrive intact; headers with an unknown kind or a deadline that
    is not a number are dropped."""

    async def body() -> tuple[Actor, list[Event]]:
        async with sink_and_raw_publisher(permissive, "t.*") as (sink, got, raw):
            raw.send_multipart([b"t.a", make_header(kind=7), msgpack.packb(1)])
            raw.send_multipart([b"t.a", make_header(deadline="x"), msgpack.packb(1)])
            raw.send_multipart([b"t.b", make_header(), msgpack.packb({1: "one", 2: [3]})])
            await until(lambda: got)
        return sink, got

    sink, got = asyncio.run(body())
    assert [e.data for e in got] == [{1: "one", 2: [3]}]
    assert sink.stats.drops.counts == {"header": 2}


@pytest.mark.parametrize("announced", ["tcp://no-port", "bogus://x"])
def test_unusable_announced_endpoints_fail_start_cleanly(
    permissive: Permissive, announced: str
) -> None:
    """A HELLO answer with endpoints that cannot be connected makes start() raise
    ProtocolError at once, and closes what it opened (no hang at context term)."""
    permissive.announce_pub = announced

    async def body() -> None:
        actor = Actor(name="a", broker=permissive.control, connect_timeout=5, key="none")
        with pytest.raises(ProtocolError, match="unusable endpoints"):
            await asyncio.wait_for(actor.start(), timeout=10)

    asyncio.run(body())


def test_ill_typed_header_fields_never_deafen_an_actor(permissive: Permissive) -> None:
    """A header with any field of the wrong type (a map as kind, a list as id...) on the
    events socket or the inbox is dropped and counted; the actor still handles events and
    still gets the replies it asks for, and stops at once."""
    bad_headers = ill_typed_headers()
    assert len(bad_headers) > 60

    async def body() -> tuple[Actor, list[Event], Any, float]:
        responder = Actor(name="responder", broker=permissive.control, key="none")
        await responder.subscribe("ask.*", lambda event: {"echo": event.data})
        await responder.start()
        try:
            async with sink_and_raw_publisher(permissive, "bad.*") as (sink, got, raw):
                inbox = f"$inbox.{sink.identity}.{sink.id}".encode()
                for header in bad_headers:
                    raw.send_multipart([b"bad.a", header, msgpack.packb(1)])
                    raw.send_multipart([inbox, header, msgpack.packb(1)])
                raw.send_multipart([b"bad.ok", make_header(), msgpack.packb("fine")])
                await until(lambda: got)
                answer = await sink.request("ask.x", 7, timeout=5)
                started = asyncio.get_running_loop().time()
            stopped = asyncio.get_running_loop().time()
        finally:
            await responder.stop()
        return sink, got, answer, stopped - started

    sink, got, answer, stop_took = asyncio.run(body())
    assert [(e.topic, e.data) for e in got] == [("bad.ok", "fine")]
    assert answer == {"echo": 7}
    assert sink.stats.drops.counts == {"header": 2 * len(bad_headers)}
    assert stop_took < 2.0  # not the whole grace: no reader died


def test_handlers_see_only_checked_fields(permissive: Permissive) -> None:
    """Oversized ids, names and headers, and topics with wildcard or empty tokens, are
    dropped before any handler runs."""

    async def body() -> tuple[Actor, list[Event]]:
        async with sink_and_raw_publisher(permissive, "t.**") as (sink, got, raw):
            one = msgpack.packb(1)
            raw.send_multipart([b"t.a", make_header(id=b"x" * 65), one])
            raw.send_multipart([b"t.a", make_header(sender="s" * 257), one])
            raw.send_multipart([b"t.a", make_header(thread_id="t" * 5000), one])
            raw.send_multipart([b"t.*", make_header(), one])
            raw.send_multipart([b"t..a", make_header(), one])
            raw.send_multipart([b"t." + b".".join([b"x"] * 200), make_header(), one])
            raw.send_multipart([b"t.ok", make_header(), msgpack.packb("fine")])
            await until(lambda: got)
        return sink, got

    sink, got = asyncio.run(body())
    assert [e.topic for e in got] == ["t.ok"]
    assert sink.stats.drops.counts == {"header": 3, "topic": 3}


def test_an_actor_survives_fuzzing_on_both_sockets(permissive: Permissive) -> None:
    """Thousands of random and almost-right messages, on the actor's topics and on its
    inbox, reach it unfiltered; it drops and counts them, handles the good event after
    them, answers a request, and still gets its own replies."""
    from clients.fuzzer import Fuzzer

    fuzz = Fuzzer(seed=3)

    async def body() -> tuple[Actor, list[Event], Any]:
        responder = Actor(name="responder", broker=permissive.control, key="none")
        await responder.subscribe("ask.*", lambda event: {"echo": event.data})
        await responder.start()
        try:
            async with sink_and_raw_publisher(permissive, "ping.*") as (sink, got, raw):
                inbox = f"$inbox.{sink.identity}.{sink.id}".encode()
                for _ in range(2000):
                    frames = fuzz.publish()
                    raw.send_multipart(frames)
                    raw.send_multipart([inbox, *frames[1:]])
                raw.send_multipart([b"ping.ok", make_header(), msgpack.packb("fine")])
                await until(lambda: any(e.topic == "ping.ok" for e in got), timeout=20)
                answer = await sink.request("ask.x", 7, timeout=5)
        finally:
            await responder.stop()
        return sink, got, answer

    sink, got, answer = asyncio.run(body())
    assert got[-1].data == "fine" and answer == {"echo": 7}
    assert sum(sink.stats.drops.counts.values()) > 1000
    assert "error" not in sink.stats.drops.counts  # every bad input had a reason


def test_the_mailbox_is_bounded_in_bytes_too(permissive: Permissive) -> None:
    """While its handler is busy, an actor queues large events only up to its mailbox's
    byte bound (64 MiB), not its 10 000 events: then it stops reading (zmq's queues push
    back), and payloads wait as bytes, decoded when their handler runs."""

    async def body() -> tuple[int, int, int]:
        release = asyncio.Event()
        got: list[int] = []

        async def slow(event: Event) -> None:
            await release.wait()
            got.append(len(event.data))

        sink = Actor(name="sink", broker=permissive.control, key="none")
        await sink.subscribe("big.*", slow)
        await sink.start()
        raw = permissive.ctx.socket(zmq.XPUB)
        raw.setsockopt(zmq.XPUB_NODROP, 1)
        raw.connect(permissive.pub)
        try:
            assert raw.poll(5000), "no subscription reached the raw publisher"
            while raw.poll(200):
                raw.recv()
            big = msgpack.packb(b"x" * 500_000)
            for _ in range(300):
                while True:
                    try:
                        raw.send_multipart([b"big.x", make_header(), big], zmq.NOBLOCK)
                        break
                    except zmq.Again:
                        await asyncio.sleep(0.005)
                if sink._receiver is not None and sink._receiver._paused:
                    break
            receiver = sink._receiver
            assert receiver is not None
            await until(lambda: receiver._paused, timeout=20)
            queued, held = receiver.backlog(), receiver._bytes
            release.set()
            await until(lambda: len(got) >= queued, timeout=20)
        finally:
            raw.close(0)
            await sink.stop()
        return queued, held, len(got)

    queued, held, handled = asyncio.run(body())
    assert 0 < queued <= 64 * 2**20 // 500_000 + 1, queued
    assert held <= 64 * 2**20 + 500_100
    assert handled >= queued
