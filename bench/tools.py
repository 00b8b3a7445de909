"""Tool-call round trips: Loom against a direct DEALER <-> ROUTER pair, in one run.

    python bench/tools.py [--runs 5] [--sequential 2000] [--pipelined 20000] [--window 32]

Every role runs in its own process; the tool adds two integers.

  (a) a DEALER client -> a ROUTER server, direct, the same frames and msgpack encoding as
      Loom's CALL/RESULT (decode meta, decode arguments, encode result)      (baseline)
  (b) the `loom call` path: a plain ToolClient -> loom-broker -> a Worker process
  (c) `await self.tool(...)` from an Actor -> loom-broker -> a Worker process

(b) and (c) run on a broker started --insecure, then secure (the default: CURVE on every
socket, client and worker an identity enrolled in an ACL, each CALL checked against its
rights); the secure rows give their p99 and rate as ratios to the insecure ones.

Sequential: one call at a time, round-trip p50/p99. Pipelined: --window calls in flight,
calls/s. Figures are medians over --runs repetitions; ratios are to (a).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import zmq
from _secure import secure_site  # beside this file

from loom import Actor, ToolClient, Worker, tool
from loom.broker import Broker, BrokerSettings, SecuritySettings
from loom.logs import configure_logging
from loom.protocol import (
    RESULT,
    decode_call,
    encode_call,
    encode_ref,
    recv_frames,
    send_frames,
)

Call = Callable[[int], Awaitable[Any]]


@tool(name="bench.add", idempotent=True, concurrency=64)
async def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


# --- (a) the direct baseline -------------------------------------------------------


def raw_server(endpoint: str, ready: Any) -> None:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(endpoint)
    ready.set()
    packb, unpackb = msgpack.packb, msgpack.unpackb
    with contextlib.suppress(zmq.ContextTerminated):
        while True:
            identity, _, meta, body = recv_frames(router, 0)
            call_id = decode_call(meta)[0]
            args = unpackb(body)
            reply = encode_ref(RESULT, call_id, packb(args["a"] + args["b"]))
            send_frames(router, [identity, *reply], 0)


def raw_client(endpoint: str, sequential: int, pipelined: int, window: int, results: Any) -> None:
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(endpoint)
    packb, unpackb = msgpack.packb, msgpack.unpackb

    def send(i: int) -> None:
        send_frames(dealer, encode_call(i, "bench.add", 5.0, None, packb({"a": i, "b": 1})), 0)

    def receive() -> int:
        command, _, body = recv_frames(dealer, 0)
        assert command == RESULT
        return int(unpackb(body))

    for i in range(200):  # warm up
        send(i)
        receive()
    latencies = []
    for i in range(sequential):
        start = time.perf_counter_ns()
        send(i)
        assert receive() == i + 1
        latencies.append(time.perf_counter_ns() - start)
    start = time.perf_counter()
    sent = 0
    for sent in range(min(window, pipelined)):
        send(sent)
    sent += 1
    for _ in range(pipelined):
        receive()
        if sent < pipelined:
            send(sent)
            sent += 1
    results.put((latencies, pipelined / (time.perf_counter() - start)))
    ctx.destroy(0)


# --- (b), (c): through loom-broker ---------------------------------------------------


def loom_broker(endpoint: str, ready: Any, security: SecuritySettings | None = None) -> None:
    """A broker process (the benches' ``mp.Process`` target): secure by default, stopped
    cleanly by SIGTERM."""
    configure_logging(level="warning", stream=sys.stderr)
    broker = Broker(BrokerSettings(endpoint=endpoint), security=security or SecuritySettings())
    broker.bind()
    signal.signal(signal.SIGTERM, lambda *_: broker.stop())
    ready.set()
    broker.run()


def loom_worker(endpoint: str, key: Any) -> None:
    configure_logging(level="warning", stream=sys.stderr)
    Worker([add], broker=endpoint, name="bench-worker", key=key).run()


async def measure(call: Call, sequential: int, pipelined: int, window: int) -> tuple[Any, ...]:
    for i in range(200):  # warm up
        await call(i)
    latencies = []
    for i in range(sequential):
        start = time.perf_counter_ns()
        assert await call(i) == i + 1
        latencies.append(time.perf_counter_ns() - start)
    todo = iter(range(pipelined))

    async def lane() -> None:
        for i in todo:
            await call(i)

    start = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(window)))
    return latencies, pipelined / (time.perf_counter() - start)


def loom_client(
    endpoint: str, sequential: int, pipelined: int, window: int, results: Any, key: Any
) -> None:
    configure_logging(level="warning", stream=sys.stderr)

    async def main() -> None:
        async with await ToolClient.connect(endpoint, name="bench", key=key) as client:
            await _until_served(client)

            def call(i: int) -> Awaitable[Any]:
                return client.call("bench.add", {"a": i, "b": 1})

            results.put(await measure(call, sequential, pipelined, window))

    asyncio.run(main())


def loom_actor(
    endpoint: str, sequential: int, pipelined: int, window: int, results: Any, key: Any
) -> None:
    configure_logging(level="warning", stream=sys.stderr)

    async def main() -> None:
        actor = Actor(name="bench-actor", broker=endpoint, key=key)
        await actor.start()
        try:
            assert actor._tools is not None
            await _until_served(actor._tools)

            def call(i: int) -> Awaitable[Any]:
                return actor.tool("bench.add", a=i, b=1)

            results.put(await measure(call, sequential, pipelined, window))
        finally:
            await actor.stop()

    asyncio.run(main())


async def _until_served(client: ToolClient) -> None:
    while (await client.directory()).tool("bench.add") is None:
        await asyncio.sleep(0.01)


# --- scenarios -------------------------------------------------------------------


INSECURE = SecuritySettings(insecure=True)


def scenario(
    kind: str, endpoint: str, args: argparse.Namespace, site: Any
) -> tuple[list[int], float]:
    """One repetition of ``kind`` (raw, client, actor; client+curve and actor+curve on
    the secure ``site``): latencies and the pipelined rate."""
    ctx = mp.get_context("spawn")
    ready, results = ctx.Event(), ctx.Queue()
    sizes = (args.sequential, args.pipelined, args.window, results)
    security, key = site if kind.endswith("+curve") else (INSECURE, "none")
    if kind == "raw":
        servers = [ctx.Process(target=raw_server, args=(endpoint, ready))]
        client = ctx.Process(target=raw_client, args=(endpoint, *sizes))
    else:
        servers = [
            ctx.Process(target=loom_broker, args=(endpoint, ready, security)),
            ctx.Process(target=loom_worker, args=(endpoint, key)),
        ]
        role = loom_client if kind.startswith("client") else loom_actor
        client = ctx.Process(target=role, args=(endpoint, *sizes, key))
    servers[0].start()
    ready.wait(30)
    for proc in [*servers[1:], client]:
        proc.start()
    try:
        latencies, rate = results.get(timeout=300)
    finally:
        client.join(10)
        for proc in (client, *reversed(servers)):  # the worker leaves before the broker
            if proc.is_alive():
                proc.terminate()
            proc.join(10)
    return latencies, rate


def scratch() -> str:
    """A private temporary directory for one bench run, removed at exit, holding the Loom
    home (unless ``$LOOM_HOME`` names one); Loom logs warnings to stderr."""
    tmp = tempfile.mkdtemp(prefix="loom-bench-", dir="/tmp")
    os.chmod(tmp, 0o700)
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    os.environ.setdefault("LOOM_HOME", os.path.join(tmp, "home"))
    configure_logging(level="warning", stream=sys.stderr)
    return tmp


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000  # ns -> us


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sequential", type=int, default=2000)
    parser.add_argument("--pipelined", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=32)
    args = parser.parse_args()
    tmp = scratch()
    site = secure_site(tmp)
    kinds = ("raw", "client", "client+curve", "actor", "actor+curve")
    figures: dict[str, list[tuple[float, float, float]]] = {k: [] for k in kinds}
    for run in range(args.runs):
        for kind, runs in figures.items():
            endpoint = f"ipc://{tmp}/t{time.monotonic_ns()}"
            latencies, rate = scenario(kind, endpoint, args, site)
            runs.append((percentile(latencies, 0.5), percentile(latencies, 0.99), rate))
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)
    report(args, figures)


def report(args: argparse.Namespace, figures: dict[str, list[tuple[float, float, float]]]) -> None:
    med = {
        k: [statistics.median(run[i] for run in v) for i in range(3)] for k, v in figures.items()
    }
    print(
        f"\nLoom tool-call bench: ipc, {args.sequential:,} sequential + {args.pipelined:,} "
        f"pipelined calls (window {args.window}), medians of {args.runs} runs, "
        f"{os.cpu_count()} cores\n"
    )
    print("| path | p50 us | p99 us | p99 ratio | calls/s pipelined | min..max | ratio |")
    print("|---|---|---|---|---|---|---|")
    rows = [
        ("(a) DEALER <-> ROUTER direct", "raw", "raw"),
        ("(b) ToolClient -> broker -> Worker (`loom call` path), insecure", "client", "raw"),
        ("(b+) the same, CURVE + ACL (ratios to b)", "client+curve", "client"),
        ("(c) Actor.tool -> broker -> Worker, insecure", "actor", "raw"),
        ("(c+) the same, CURVE + ACL (ratios to c)", "actor+curve", "actor"),
    ]
    for label, kind, base in rows:
        p50, p99, rate = med[kind]
        rates = [run[2] for run in figures[kind]]
        spread = f"{min(rates):,.0f}..{max(rates):,.0f}"
        base_p99, base_rate = med[base][1], med[base][2]
        print(
            f"| {label} | {p50:.0f} | {p99:.0f} | {p99 / base_p99:.2f} | {rate:,.0f} | {spread} "
            f"| {rate / base_rate:.2f} |"
        )


if __name__ == "__main__":
    main()
