"""Durable topics: the broker's LMDB log, durable subscriptions, replay, limits."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
import zmq
from clients.ready import curve
from conftest import (
    LOOM,
    Proc,
    broker_stats,
    make_header,
    spawn_actor,
    start_broker,
    until,
    wait_for,
)

from loom import Actor, Event
from loom.errors import DurableError
from loom.protocol import PUBACK, PUBLISH


class Keeper(Actor):
    """A durable subscriber `audit` on `orders.*` that keeps what it handles."""

    def __init__(self, broker: str) -> None:
        super().__init__(name="keeper", broker=broker)
        self.got: list[int] = []
        self.seqs: list[int] = []

    async def on_start(self) -> None:
        await self.subscribe("orders.*", self.keep, durable="audit")

    def keep(self, event: Event) -> None:
        assert event.seq is not None and event.stream == "audit"
        self.got.append(event.data)
        self.seqs.append(event.seq)


def durable_broker(spawn: Callable[..., Proc], endpoint: str, data: Path, *extra: str) -> Proc:
    return start_broker(spawn, endpoint, "--heartbeat", "0.2", "--data-dir", str(data), *extra)


def test_a_durable_subscriber_gets_what_it_missed_then_live(
    spawn: Callable[..., Proc], endpoint: str, short_tmp: Path
) -> None:
    """Events logged before a subscriber first starts, and while it is stopped, reach it
    when it (re)starts, in order, once; then live ones."""
    durable_broker(spawn, endpoint, short_tmp / "data")

    async def body() -> None:
        publisher = Actor(name="publisher", broker=endpoint)
        await publisher.start()
        for i in range(300):
            await publisher.emit(f"orders.{i % 3}", i, qos="reliable")
        await publisher.emit("other.topic", -1, qos="reliable")
        keeper = Keeper(endpoint)
        await keeper.start()
        await until(lambda: len(keeper.got) == 300)
        await keeper.stop()
        for i in range(300, 500):
            await publisher.emit(f"orders.{i % 3}", i, qos="reliable")
        again = Keeper(endpoint)
        await again.start()
        await until(lambda: len(again.got) == 200)
        await publisher.emit("orders.0", 500, qos="reliable")
        await until(lambda: len(again.got) == 201)
        assert keeper.got == list(range(300))
        assert again.got == list(range(300, 501))
        assert again.seqs == sorted(again.seqs) and again.seqs[0] > keeper.seqs[-1]
        await again.stop()
        await publisher.stop()

    asyncio.run(body())
    replayed = subprocess.run(
        [*LOOM, "replay", "orders.*", "--since", "298", "--json", "--broker", endpoint],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    lines = [json.loads(line) for line in replayed.stdout.splitlines()]
    assert [(e["seq"], e["data"]) for e in lines[:3]] == [(299, 298), (300, 299), (302, 300)]
    assert len(lines) == 203 and lines[-1]["data"] == 500


@pytest.mark.timeout(90)
def test_killing_the_broker_mid_stream_loses_and_repeats_nothing(
    spawn: Callable[..., Proc], endpoint: str, short_tmp: Path
) -> None:
    """SIGKILL the broker while 2000 durable events stream from a publisher process to a
    subscriber; restart it on the same data: the subscriber handles each exactly once."""
    data = short_tmp / "data"
    first = durable_broker(spawn, endpoint, data)

    async def body() -> None:
        keeper = Keeper(endpoint)
        await keeper.start()
        publisher = await asyncio.to_thread(spawn_actor, spawn, "durable_pub", endpoint, "2000")
        await until(lambda: len(keeper.got) >= 300, timeout=20)
        os.kill(first.pid, signal.SIGKILL)
        await asyncio.to_thread(durable_broker, spawn, endpoint, data)
        await until(lambda: len(keeper.got) >= 2000, timeout=40)
        await asyncio.to_thread(publisher.wait_line, "published 2000, unacknowledged 0", 30)
        await keeper.stop()
        assert sorted(keeper.got) == list(range(2000))  # each exactly once
        assert keeper.seqs == sorted(keeper.seqs)

    asyncio.run(body())
    stats = broker_stats(endpoint)["durable"]
    assert stats["log"]["last_seq"] == 2000


def test_without_a_data_dir_durable_use_fails_clearly(broker: str) -> None:
    """A durable subscription raises DurableError; reliable emits are counted as refused."""

    async def body() -> None:
        with pytest.raises(DurableError, match="no data_dir"):
            await Keeper(broker).start()
        publisher = Actor(name="publisher", broker=broker)
        await publisher.start()
        await publisher.emit("orders.1", 1, qos="reliable")
        await until(lambda: publisher.stats.drops.counts.get("durable_no_store") == 1)
        await publisher.stop()

    asyncio.run(body())


def test_a_full_log_refuses_events_and_keeps_what_it_has(
    spawn: Callable[..., Proc], endpoint: str, short_tmp: Path
) -> None:
    """With a tiny map, events past the limit are refused (STORE_FULL, counted); the broker
    keeps serving and the log it has stays readable."""
    durable_broker(spawn, endpoint, short_tmp / "data", "--durable-map-size", str(256 * 1024))

    async def body() -> None:
        publisher = Actor(name="publisher", broker=endpoint)
        await publisher.start()
        for i in range(400):
            await publisher.emit("orders.big", {"i": i, "pad": "x" * 2000}, qos="reliable")
        await publisher.flush(10)
        refused = publisher.stats.drops.counts.get("durable_store_full", 0)
        assert 0 < refused < 400
        await publisher.stop()

    asyncio.run(body())
    stats = wait_for(lambda: broker_stats(endpoint)["durable"])
    assert stats["refused"] > 0 and stats["log"]["last_seq"] == stats["published"]
    replayed = subprocess.run(
        [*LOOM, "replay", "orders.*", "--broker", endpoint],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert len(replayed.stdout.splitlines()) == stats["published"]


def test_retention_by_size_drops_the_oldest(
    spawn: Callable[..., Proc], endpoint: str, short_tmp: Path
) -> None:
    """Past durable_max_bytes the oldest events go; replay starts later."""
    durable_broker(spawn, endpoint, short_tmp / "data", "--durable-max-bytes", "20000")

    async def body() -> None:
        publisher = Actor(name="publisher", broker=endpoint)
        await publisher.start()
        for i in range(200):
            await publisher.emit("orders.x", {"i": i, "pad": "x" * 400}, qos="reliable")
        await publisher.stop()

    asyncio.run(body())
    stats = wait_for(lambda: (d := broker_stats(endpoint)["durable"])["trimmed"] and d)
    assert stats["log"]["bytes"] <= 20000 and stats["log"]["first_seq"] > 1
    assert stats["log"]["last_seq"] == 200


def test_retention_by_age_drops_old_events(
    spawn: Callable[..., Proc], endpoint: str, short_tmp: Path
) -> None:
    """Events older than durable_max_age go (checked about once a second)."""
    durable_broker(spawn, endpoint, short_tmp / "data", "--durable-max-age", "0.5")

    async def body() -> None:
        publisher = Actor(name="publisher", broker=endpoint)
        await publisher.start()
        for i in range(50):
            await publisher.emit("orders.x", i, qos="reliable")
        await publisher.stop()

    asyncio.run(body())
    stats = wait_for(lambda: (d := broker_stats(endpoint)["durable"])["trimmed"] == 50 and d)
    assert stats["log"]["first_seq"] == 0 and stats["log"]["last_seq"] == 50


def test_a_sparse_subscription_is_not_stalled_by_other_topics(
    spawn: Callable[..., Proc], endpoint: str, short_tmp: Path
) -> None:
    """Events of other topics take no room in a durable subscriber's window: 1500 of them,
    then 3 it wants, and it gets the 3."""
    durable_broker(spawn, endpoint, short_tmp / "data")

    async def body() -> None:
        publisher = Actor(name="publisher", broker=endpoint)
        await publisher.start()
        for i in range(1500):
            await publisher.emit("metrics.cpu", i, qos="reliable")
        for i in range(3):
            await publisher.emit("orders.1", i, qos="reliable")
        keeper = Keeper(endpoint)
        await keeper.start()
        await until(lambda: len(keeper.got) == 3)
        assert keeper.seqs == [1501, 1502, 1503]
        await keeper.stop()
        await publisher.stop()

    asyncio.run(body())


def test_sequence_numbers_are_never_reused(
    spawn: Callable[..., Proc], endpoint: str, short_tmp: Path
) -> None:
    """Retention empties the log, the broker restarts: new events continue the numbering,
    so a subscriber that acknowledged the old ones gets the new ones."""
    data = short_tmp / "data"
    first = durable_broker(spawn, endpoint, data, "--durable-max-age", "0.3")

    async def publish(numbers: range) -> None:
        publisher = Actor(name="publisher", broker=endpoint)
        await publisher.start()
        for i in numbers:
            await publisher.emit("orders.1", i, qos="reliable")
        await publisher.stop()

    async def read(count: int) -> list[int]:
        keeper = Keeper(endpoint)
        await keeper.start()
        await until(lambda: len(keeper.got) == count)
        await keeper.stop()
        return keeper.seqs

    asyncio.run(publish(range(5)))
    assert asyncio.run(read(5)) == [1, 2, 3, 4, 5]
    wait_for(lambda: broker_stats(endpoint)["durable"]["trimmed"] == 5)
    assert first.stop() == 0
    durable_broker(spawn, endpoint, data, "--durable-max-age", "60")
    asyncio.run(publish(range(5, 8)))
    assert asyncio.run(read(3)) == [6, 7, 8]


def test_a_bad_message_id_is_refused_alone(
    spawn: Callable[..., Proc], endpoint: str, short_tmp: Path
) -> None:
    """A PUBLISH whose header id is empty is answered MALFORMED; the events around it in
    the same batch are logged."""
    durable_broker(spawn, endpoint, short_tmp / "data")
    with zmq.Context() as ctx, curve(ctx.socket(zmq.DEALER)) as sock:
        sock.linger = 0
        sock.connect(endpoint)
        for mid in (b"a" * 16, b"", b"b" * 16):
            sock.send_multipart([PUBLISH, b"orders.1", make_header(id=mid), msgpack.packb(1)])
        answers: dict[bytes, tuple[int | None, str | None]] = {}
        while len(answers) < 3:
            assert sock.poll(5000), answers
            command, meta, _ = sock.recv_multipart()
            assert command == PUBACK
            answers.update({mid: (seq, error) for mid, seq, error in msgpack.unpackb(meta)})
    assert answers[b""] == (None, "MALFORMED")
    assert answers[b"a" * 16] == (1, None) and answers[b"b" * 16] == (2, None)


def _ask(sock: zmq.Socket[bytes], command: bytes, body: dict[str, object]) -> tuple[bytes, dict]:
    """Send a control command on a raw DEALER and read its answer (skipping deliveries)."""
    sock.send_multipart([command, msgpack.packb(body)])
    while True:
        assert sock.poll(5000), f"no answer to {command!r}"
        frames = sock.recv_multipart()
        if frames[0] not in (b"DELIVER", b"PUBACK"):
            return frames[0], msgpack.unpackb(frames[1])


def test_durable_streams_live_only_as_long_as_their_peer(
    spawn: Callable[..., Proc], endpoint: str, short_tmp: Path
) -> None:
    """A DSUB from a peer that never said HELLO is refused (UNKNOWN_PEER), a thousand of
    them leave nothing behind; a stream whose peer goes silent is dropped at the
    liveness deadline, and its position waits in the log for the next subscriber."""
    durable_broker(spawn, endpoint, short_tmp / "data")

    async def publish(numbers: range) -> None:
        publisher = Actor(name="publisher", broker=endpoint)
        await publisher.start()
        for i in numbers:
            await publisher.emit("orders.1", i, qos="reliable")
        await publisher.stop()

    asyncio.run(publish(range(3)))
    dsub = {"name": "audit", "patterns": ["orders.*"], "rid": 1}
    with zmq.Context() as ctx:
        strangers = []
        for _ in range(1000):
            sock = curve(ctx.socket(zmq.DEALER))
            sock.linger = 0
            sock.connect(endpoint)
            sock.send_multipart([b"DSUB", msgpack.packb({**dsub, "name": f"x{len(strangers)}"})])
            strangers.append(sock)
        for sock in strangers:
            assert sock.poll(5000)
            command, body = sock.recv_multipart()
            assert command == b"ERROR" and msgpack.unpackb(body)["code"] == "UNKNOWN_PEER"
            sock.close()
        assert broker_stats(endpoint)["durable"]["subscribers"] == {}

        with curve(ctx.socket(zmq.DEALER)) as sock:  # says HELLO, takes two events, goes silent
            sock.linger = 0
            sock.connect(endpoint)
            assert _ask(sock, b"HELLO", {"version": 1, "name": "quiet", "rid": 0})[0] == b"HELLO"
            command, answer = _ask(sock, b"DSUB", dsub)
            assert command == b"DSUB" and answer["acked"] == 0
            sock.send_multipart([b"DACK", msgpack.packb({"name": "audit", "seq": 2})])
            assert wait_for(lambda: broker_stats(endpoint)["durable"]["subscribers"])
            wait_for(lambda: broker_stats(endpoint)["durable"]["subscribers"] == {}, timeout=5)

    async def resume() -> list[int]:
        keeper = Keeper(endpoint)
        await keeper.start()
        await until(lambda: keeper.got)
        await keeper.stop()
        return keeper.got

    assert asyncio.run(resume()) == [2]  # 0 and 1 were acknowledged by the silent peer


def test_a_peer_cannot_take_every_stream_or_fill_the_log_with_names(
    spawn: Callable[..., Proc], endpoint: str, short_tmp: Path
) -> None:
    """One peer holds at most 16 durable streams, each with at most 8 KiB of patterns;
    names that never acknowledge anything leave no position in the log (a peer cycling
    through names cannot fill it), names that do are kept."""
    durable_broker(spawn, endpoint, short_tmp / "data")

    async def publish() -> None:
        publisher = Actor(name="publisher", broker=endpoint)
        await publisher.start()
        await publisher.emit("orders.1", 1, qos="reliable")
        await publisher.stop()

    asyncio.run(publish())
    with zmq.Context() as ctx, curve(ctx.socket(zmq.DEALER)) as sock:
        sock.linger = 0
        sock.connect(endpoint)
        assert _ask(sock, b"HELLO", {"version": 1, "name": "greedy", "rid": 0})[0] == b"HELLO"
        answers = [
            _ask(sock, b"DSUB", {"name": f"s{i}", "patterns": ["orders.*"], "rid": i})
            for i in range(17)
        ]
        assert [command for command, _ in answers[:16]] == [b"DSUB"] * 16
        assert answers[16][0] == b"ERROR" and answers[16][1]["code"] == "TOO_MANY"
        wide = {"name": "wide", "patterns": [f"p{i}." + "x" * 995 for i in range(9)], "rid": 20}
        command, error = _ask(sock, b"DSUB", wide)
        assert command == b"ERROR" and error["code"] == "MALFORMED"
        sock.send_multipart([b"DACK", msgpack.packb({"name": "s3", "seq": 1})])
        sock.send_multipart([b"BYE", msgpack.packb({})])
    log = wait_for(lambda: (d := broker_stats(endpoint)["durable"]) and not d["subscribers"] and d)
    assert log["log"]["names"] == 1  # s3 acknowledged; the fifteen others left nothing
