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
from conftest import make_header, until

from loom import Actor, Event, ProtocolError
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
    sink = Actor(name="sink", broker=permissive.control)
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
        actor = Actor(name="a", broker=permissive.control, connect_timeout=5)
        with pytest.raises(ProtocolError, match="unusable endpoints"):
            await asyncio.wait_for(actor.start(), timeout=10)

    asyncio.run(body())
