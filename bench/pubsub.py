"""Pub/sub throughput and latency: Loom against raw pyzmq, in one run, on this machine.

    python bench/pubsub.py [--runs 5] [--count 200000] [--transport ipc|tcp]

Every role runs in its own process. Publishers use an XPUB with XPUB_NODROP (as Loom
actors do), so nothing is dropped and rates are what the receiver really handled.

  (a) raw pyzmq PUB -> SUB, direct, same envelope encode/decode as Loom  (baseline)
  (b) the same through the C zmq.proxy(XSUB, XPUB)                       (baseline for c)
  (c) the same through loom-broker (validation, per-topic counters)
  (d) Actor -> loom-broker -> Actor, a counting handler                  (vs a)
  (e) latency at a fixed 10k events/s, Actor -> broker -> Actor          (vs raw at 10k/s)

(c), (d) and (e) run twice: on a broker started --insecure, and secure (the default:
CURVE on every socket, the peers an identity enrolled in an ACL file, so every message
is checked against its rights and stamped with its origin); the secure rows are given
as a ratio to the insecure ones.

Figures are medians over --runs repetitions.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import multiprocessing as mp
import os
import queue
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import msgpack
import zmq
from _secure import secure_site  # beside this file

from loom import Actor, Event
from loom.broker import Broker, BrokerSettings, SecuritySettings
from loom.logs import configure_logging
from loom.protocol import (
    EVENT,
    HELLO,
    VERSION,
    IdSource,
    decode_header,
    decode_payload,
    pack_header,
)
from loom.session import PeerKey, ask, secure_client

PAYLOAD = b"x" * 64
WARM = b"bench.warm"
TOPIC = b"bench.x"
RATE = 10_000  # events/s for the latency runs
LATENCY_SECONDS = 2.0
TICK = 0.001
"""Paced publishers (raw and actor alike) send what is due once per tick: the same
offered load shape for both (asyncio's sleep cannot go below ~1 ms anyway)."""


# --- raw roles -------------------------------------------------------------------


def _raw_frames(ids: IdSource, data: Any) -> tuple[bytes, bytes]:
    mid = ids.next()
    header = pack_header(EVENT, mid, "bench", time.time(), None, None, None, None, 0, mid, None)
    return header, msgpack.packb(data)


def raw_publisher(
    endpoint: str, count: int, ready: Any, rate: int, done: Any, key: PeerKey | None
) -> None:
    """Send warm-up messages until the receiver is ready, then ``count`` measured ones;
    keep the socket open until the receiver has them all (libzmq may drop what a closing
    socket still holds, docs/decisions.md #8)."""
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    secure_client(pub, key)
    pub.setsockopt(zmq.XPUB_NODROP, 1)
    pub.connect(endpoint)
    ids = IdSource()
    send = _sender(pub)
    while not ready.is_set():
        header, payload = _raw_frames(ids, None)
        send(WARM, header, payload)
        time.sleep(0.002)
    if rate:
        _paced(count, rate, lambda: _send_timed(send, ids))
    else:
        for _ in range(count):
            header, payload = _raw_frames(ids, PAYLOAD)
            send(TOPIC, header, payload)
    done.wait(60)
    ctx.destroy(linger=0)


def _sender(pub: zmq.Socket[bytes]) -> Callable[[bytes, bytes, bytes], None]:
    """Send one message, waiting while the queue is full: an XPUB with NODROP answers
    EAGAIN instead of blocking (as a Loom actor's emit waits)."""
    raw = pub.send
    more = zmq.SNDMORE.value
    noblock = zmq.NOBLOCK.value

    def send(topic: bytes, header: bytes, payload: bytes) -> None:
        while True:
            try:
                raw(topic, more | noblock)
                break
            except zmq.Again:
                time.sleep(0.0005)
        raw(header, more)
        raw(payload)

    return send


def _send_timed(send: Callable[[bytes, bytes, bytes], None], ids: IdSource) -> None:
    header, payload = _raw_frames(ids, [time.perf_counter_ns(), PAYLOAD[:48]])
    send(TOPIC, header, payload)


def _paced(count: int, rate: int, send_one: Callable[[], None]) -> None:
    """Send ``count`` messages at ``rate``/s: each tick, what is due by then."""
    start = time.perf_counter()
    sent = 0
    while sent < count:
        due = min(count, int((time.perf_counter() - start) * rate) + 1)
        while sent < due:
            send_one()
            sent += 1
        time.sleep(TICK)


def raw_subscriber(
    endpoint: str,
    count: int,
    ready: Any,
    results: Any,
    timed: bool,
    bind: bool,
    done: Any,
    key: PeerKey | None,
) -> None:
    """Receive and decode; report messages/s (or latencies) over the measured ones, or
    an error when nothing has come for 20 s."""
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    secure_client(sub, key)
    sub.setsockopt(zmq.RCVTIMEO, 20_000)
    sub.bind(endpoint) if bind else sub.connect(endpoint)
    sub.subscribe(b"bench.")  # all the bench sends: a right the ACL can grant
    recv = sub.recv
    got = 0
    latencies: list[int] = []
    start = 0.0
    try:
        while got < count:
            topic = recv()
            header = recv()
            payload = recv()
            envelope = decode_header(header)
            data = decode_payload(payload, envelope.content_type)
            if topic == WARM:
                ready.set()
                continue
            if got == 0:
                start = time.perf_counter()
            got += 1
            if timed:
                latencies.append(time.perf_counter_ns() - data[0])
    except zmq.Again:
        results.put(RuntimeError(f"the subscriber got {got} of {count} messages, then none"))
    else:
        elapsed = time.perf_counter() - start
        results.put(latencies if timed else (count - 1) / elapsed)
    finally:
        done.set()
        ctx.destroy(linger=0)


def c_proxy(front: str, back: str, ready: Any) -> None:
    ctx = zmq.Context()
    xsub = ctx.socket(zmq.XSUB)
    xsub.bind(front)
    xpub = ctx.socket(zmq.XPUB)
    xpub.setsockopt(zmq.XPUB_NODROP, 1)
    xpub.bind(back)
    ready.set()
    with contextlib.suppress(zmq.ContextTerminated):
        zmq.proxy(xsub, xpub)


def loom_broker(endpoint: str, ready: Any, security: SecuritySettings) -> None:
    configure_logging(level="warning", stream=sys.stderr)
    broker = Broker(BrokerSettings(endpoint=endpoint), security=security)
    broker.bind()
    ready.set()
    import signal

    signal.signal(signal.SIGTERM, lambda *_: broker.stop())
    broker.run()


# --- actor roles -----------------------------------------------------------------


class _Counter(Actor):
    def __init__(self, broker: str, count: int, timed: bool, key: Any) -> None:
        super().__init__(name="counter", broker=broker, key=key)
        self.count, self.timed = count, timed
        self.got = 0
        self.t0 = 0.0
        self.latencies: list[int] = []
        self.done = asyncio.Event()

    def counted(self, event: Event) -> None:
        if self.got == 0:
            self.t0 = time.perf_counter()
        self.got += 1
        if self.timed:
            self.latencies.append(time.perf_counter_ns() - event.data[0])
        if self.got == self.count:
            self.done.set()


def actor_subscriber(
    broker: str, count: int, ready: Any, results: Any, timed: bool, key: Any
) -> None:
    configure_logging(level="warning", stream=sys.stderr)

    async def main() -> None:
        actor = _Counter(broker, count, timed, key)
        await actor.subscribe("bench.*", actor.counted)
        await actor.start()
        ready.set()
        await actor.done.wait()
        elapsed = time.perf_counter() - actor.t0
        results.put(actor.latencies if timed else (count - 1) / elapsed)
        await actor.stop()

    asyncio.run(main())


def actor_publisher(broker: str, count: int, ready: Any, rate: int, key: Any) -> None:
    configure_logging(level="warning", stream=sys.stderr)

    async def main() -> None:
        actor = Actor(name="publisher", broker=broker, key=key)
        await actor.start()
        while not ready.is_set():
            await asyncio.sleep(0.005)
        emit = actor.emit
        if rate:
            start, sent = time.perf_counter(), 0
            while sent < count:
                due = min(count, int((time.perf_counter() - start) * rate) + 1)
                while sent < due:
                    await emit("bench.x", [time.perf_counter_ns(), PAYLOAD[:48]])
                    sent += 1
                await asyncio.sleep(TICK)
        else:
            for _ in range(count):
                await emit("bench.x", PAYLOAD)
        await actor.stop()

    asyncio.run(main())


# --- scenarios -------------------------------------------------------------------


def _run(roles: list[tuple[Callable[..., None], tuple[Any, ...]]], results: Any) -> Any:
    """Start the roles, return the figure the receiver reports; raise (never hang) when it
    reports an error or nothing within two minutes."""
    procs = [mp.get_context("spawn").Process(target=fn, args=args) for fn, args in roles]
    for proc in procs:
        proc.start()
    try:
        figure = results.get(timeout=120)
    except queue.Empty:
        raise RuntimeError("no figure within 120 s: a role died or hung") from None
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join()
    if isinstance(figure, Exception):
        raise figure
    return figure


INSECURE = SecuritySettings(insecure=True)


def scenario(kind: str, new: Callable[[], str], count: int, rate: int = 0, site: Any = None) -> Any:
    """Run one repetition of ``kind`` (raw, cproxy, broker, actors; broker+curve and
    actors+curve on the secure ``site``); its figure."""
    ctx = mp.get_context("spawn")
    ready, results, up, done = ctx.Event(), ctx.Queue(), ctx.Event(), ctx.Event()
    timed = bool(rate)
    secure = kind.endswith("+curve")
    security, key = site if secure else (INSECURE, None)
    actor_key = key if secure else "none"
    if kind == "raw":  # the subscriber binds, the publisher connects: no third hop
        direct = new()
        return _run(
            [
                (raw_subscriber, (direct, count, ready, results, timed, True, done, None)),
                (raw_publisher, (direct, count, ready, rate, done, None)),
            ],
            results,
        )
    control = new()
    if kind == "cproxy":
        pub_at, sub_at = new(), new()
        middle = ctx.Process(target=c_proxy, args=(pub_at, sub_at, up))
    else:
        middle = ctx.Process(target=loom_broker, args=(control, up, security))
    middle.start()
    try:
        if not up.wait(10):
            raise RuntimeError(f"{kind}: the middle process did not start")
        if kind.startswith("actors"):
            return _run(
                [
                    (actor_subscriber, (control, count, ready, results, timed, actor_key)),
                    (actor_publisher, (control, count, ready, rate, actor_key)),
                ],
                results,
            )
        if kind.startswith("broker"):
            pub_at, sub_at = _announced(control, actor_key)
        return _run(
            [
                (raw_subscriber, (sub_at, count, ready, results, timed, False, done, key)),
                (raw_publisher, (pub_at, count, ready, rate, done, key)),
            ],
            results,
        )
    finally:
        middle.terminate()
        middle.join(10)


def _announced(control: str, key: Any) -> tuple[str, str]:
    hello = asyncio.run(ask(control, HELLO, {"version": VERSION}, key=key))
    return hello["pub"], hello["sub"]


def _percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000  # ns -> us


def main() -> None:
    configure_logging(level="warning", stream=sys.stderr)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--transport", choices=("ipc", "tcp"), default="ipc")
    parser.add_argument("--only", choices=("throughput", "latency"), help="run one half")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="loom-bench-", dir="/tmp")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)

    def new() -> str:
        if args.transport == "ipc":
            return f"ipc://{tmp}/s{time.monotonic_ns()}"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return f"tcp://127.0.0.1:{probe.getsockname()[1]}"

    site = secure_site(tmp)
    kinds = ("raw", "cproxy", "broker", "broker+curve", "actors", "actors+curve")
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    lat: dict[str, list[tuple[float, float]]] = {"raw": [], "actors": [], "actors+curve": []}
    n_lat = int(RATE * LATENCY_SECONDS)
    for run in range(args.runs):
        for kind, figures in rates.items():
            if args.only != "latency":
                figures.append(scenario(kind, new, args.count, site=site))
        for kind, percentiles in lat.items():
            if args.only == "throughput":
                continue
            samples = scenario(kind, new, n_lat, rate=RATE, site=site)
            percentiles.append((_percentile(samples, 0.5), _percentile(samples, 0.99)))
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)

    report(args, rates, lat)


def report(
    args: argparse.Namespace,
    rates: dict[str, list[float]],
    lat: dict[str, list[tuple[float, float]]],
) -> None:
    """Print the tables: medians, the spread over runs, and each ratio to its baseline."""
    if args.only != "latency":
        throughput_table(args, rates)
    if args.only != "throughput":
        latency_table(lat)


def throughput_table(args: argparse.Namespace, rates: dict[str, list[float]]) -> None:
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(
        f"\nLoom pub/sub bench: {args.transport}, 64 B payloads, {args.count:,} msgs/run, "
        f"medians of {args.runs} runs, {os.cpu_count()} cores\n"
    )
    print("| path | msgs/s (median) | min..max | ratio | to |")
    print("|---|---|---|---|---|")
    rows = [
        ("(a) raw PUB->SUB + envelope", "raw", "raw"),
        ("(b) C zmq.proxy", "cproxy", "raw"),
        ("(c) loom-broker --insecure", "broker", "cproxy"),
        ("(c+) loom-broker, CURVE + ACL", "broker+curve", "broker"),
        ("(d) Actor -> broker -> Actor, insecure", "actors", "raw"),
        ("(d+) the same, CURVE + ACL", "actors+curve", "actors"),
    ]
    names = {"raw": "(a)", "cproxy": "(b)", "broker": "(c)", "actors": "(d)"}
    for label, kind, base in rows:
        spread = f"{min(rates[kind]):,.0f}..{max(rates[kind]):,.0f}"
        ratio = med[kind] / med[base]
        print(f"| {label} | {med[kind]:,.0f} | {spread} | {ratio:.2f} | {names[base]} |")


def latency_table(lat: dict[str, list[tuple[float, float]]]) -> None:
    p50 = {k: statistics.median(x[0] for x in v) for k, v in lat.items()}
    p99 = {k: statistics.median(x[1] for x in v) for k, v in lat.items()}
    print(f"\nLatency at {RATE:,} events/s for {LATENCY_SECONDS:g} s, microseconds:\n")
    print("| path | p50 | p99 | p99 ratio |")
    print("|---|---|---|---|")
    print(f"| raw PUB->SUB + envelope | {p50['raw']:.0f} | {p99['raw']:.0f} | 1.00 |")
    ratio = p99["actors"] / p99["raw"]
    actors = f"{p50['actors']:.0f} | {p99['actors']:.0f}"
    print(f"| (e) Actor -> broker -> Actor, insecure | {actors} | {ratio:.2f} |")
    ratio = p99["actors+curve"] / p99["actors"]
    secure = f"{p50['actors+curve']:.0f} | {p99['actors+curve']:.0f}"
    print(f"| (e+) the same, CURVE + ACL (ratio to e) | {secure} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
