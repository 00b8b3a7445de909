"""Soak: a broker under steady events, requests, durable events and tool calls for a
while; its memory after warm-up and at the end.

    python bench/soak.py [--seconds 60] [--rate 2000] [--transport ipc|tcp]

A broker (with a data dir) and a tool worker run as processes of their own; one load
process runs the actors: a publisher emitting --rate events/s (one in ten durable) to a
subscriber, a requester asking a responder, and tool calls to the worker, all the time.
The broker's resident memory is read after a warm-up (a tenth of the run, at least 5 s),
half-way and at the end, split as Linux counts it: anonymous (the heap: what a leak
grows) and file-backed (mostly the durable log's LMDB map, which grows with the log by
design). The broker's bounded buffers fill for a while (the trace buffer keeps the last
100,000 messages and calls: at this load the calls take about 90 s); the figure is the
anonymous part's growth over the second half (1.00: nothing grows; run 300 s or more). The
bench ends by itself after --seconds (plus start and stop), with an error if a role
fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import psutil

from loom import Actor, Event, ToolClient
from loom.logs import configure_logging


def resident(pid: int) -> dict[str, int]:
    """A process's resident memory in bytes: ``RssAnon`` and ``RssFile``."""
    found = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("RssAnon", "RssFile"):
                found[name] = int(value.split()[0]) * 1024
    return found


class Counts:
    def __init__(self) -> None:
        self.events = self.durable = self.received = 0
        self.requests = self.calls = self.failures = 0


async def load(endpoint: str, seconds: float, rate: int, counts: Counts) -> None:
    """Events, durable events, requests and tool calls until ``seconds`` have passed."""
    subscriber = Actor(name="soak-subscriber", broker=endpoint)
    responder = Actor(name="soak-responder", broker=endpoint)
    publisher = Actor(name="soak-publisher", broker=endpoint)

    def received(event: Event) -> None:
        counts.received += 1

    await subscriber.subscribe("soak.event.*", received)
    await subscriber.subscribe("soak.durable.*", received, durable="soak")
    await responder.subscribe("soak.ask", lambda event: {"echo": event.data})
    for actor in (subscriber, responder, publisher):
        await actor.start()
    deadline = time.monotonic() + seconds

    async def publish() -> None:
        tick, sent, start = 0.01, 0, time.monotonic()
        while time.monotonic() < deadline:
            due = int((time.monotonic() - start) * rate)
            while sent < due:
                if sent % 10:
                    await publisher.emit(f"soak.event.{sent % 7}", {"n": sent, "pad": "x" * 200})
                    counts.events += 1
                else:
                    await publisher.emit("soak.durable.x", {"n": sent}, qos="reliable")
                    counts.durable += 1
                sent += 1
            await asyncio.sleep(tick)

    async def ask() -> None:
        while time.monotonic() < deadline:
            await publisher.request("soak.ask", counts.requests, timeout=5)
            counts.requests += 1

    async def call() -> None:
        async with await ToolClient.connect(endpoint, name="soak-caller") as client:
            while time.monotonic() < deadline:
                try:
                    await client.call("demo.stats", {"values": [1.0, 2.0, 3.0]}, timeout=5)
                    counts.calls += 1
                except Exception:
                    counts.failures += 1

    try:
        await asyncio.gather(publish(), ask(), call())
    finally:
        for actor in (publisher, responder, subscriber):
            await actor.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=int, default=2000, help="events per second")
    parser.add_argument("--transport", choices=("ipc", "tcp"), default="ipc")
    args = parser.parse_args()
    configure_logging(level="warning", stream=sys.stderr)
    base = tempfile.mkdtemp(prefix="loom-soak-", dir="/tmp")
    endpoint = f"ipc://{base}/broker" if args.transport == "ipc" else "tcp://127.0.0.1:7719"
    quiet = subprocess.DEVNULL
    broker = subprocess.Popen(
        [sys.executable, "-m", "loom.cli.broker", "--endpoint", endpoint, "--data-dir", base],
        stdout=quiet,
        stderr=quiet,
    )
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loom.cli.main",
            "worker",
            "loom.demo.tools:TOOLS",
            "--broker",
            endpoint,
        ],
        stdout=quiet,
        stderr=quiet,
    )
    counts = Counts()
    try:
        process = psutil.Process(broker.pid)
        warm = max(5.0, args.seconds / 10)

        async def run() -> list[dict[str, int]]:
            await asyncio.sleep(1.0)  # the broker and worker come up
            task = asyncio.ensure_future(load(endpoint, args.seconds, args.rate, counts))
            await asyncio.sleep(warm)
            readings = [resident(process.pid)]
            print("run 1/1 warmed up", file=sys.stderr, flush=True)
            await asyncio.sleep(args.seconds / 2 - warm)
            readings.append(resident(process.pid))
            await task
            return [*readings, resident(process.pid)]

        warmed, half, ended = asyncio.run(run())
    finally:
        for proc in (worker, broker):
            proc.send_signal(signal.SIGTERM)
        for proc in (worker, broker):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(base, ignore_errors=True)
    per_second = {
        name: getattr(counts, name) / args.seconds
        for name in ("events", "durable", "received", "requests", "calls")
    }
    print(f"\nLoom soak: {args.transport}, {args.seconds:g} s, {os.cpu_count()} cores\n")
    print("| figure | value |")
    print("|---|---|")
    for name, value in per_second.items():
        print(f"| {name} per second | {value:,.0f} |")
    print(f"| tool-call failures | {counts.failures} |")
    for kind in ("RssAnon", "RssFile"):
        mib = ", ".join(f"{reading[kind] / 2**20:.1f}" for reading in (warmed, half, ended))
        print(f"| broker {kind} after warm-up, half-way, at the end | {mib} MiB |")
    print(f"| second half growth (anonymous) | {ended['RssAnon'] / half['RssAnon']:.2f} |")
    if counts.failures or not counts.calls or not counts.received:
        raise SystemExit("soak: a role failed (see the figures)")


if __name__ == "__main__":
    main()
