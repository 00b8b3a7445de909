"""Durable publishing against standard publishing, in one run.

    python bench/durable.py [--runs 5] [--count 50000]

A broker with a data dir (LMDB on /tmp, default sync) in one process, an Actor that
emits --count events in another: `emit(qos="standard")` (baseline), then
`emit(qos="reliable")` until the broker has acknowledged the last one (logged, with
fsync). Figures are medians over --runs; the ratio is reliable / standard. A raw pyzmq
PUB->SUB pair with the same envelope gives the machine's ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from typing import Any

from loom import Actor
from loom.broker import Broker, BrokerSettings
from loom.logs import configure_logging

PAYLOAD = b"x" * 64
ORDER = ("standard", "reliable")


def broker(endpoint: str, data_dir: str, ready: Any) -> None:
    configure_logging(level="warning", stream=sys.stderr)
    instance = Broker(BrokerSettings(endpoint=endpoint, data_dir=data_dir))
    instance.bind()
    signal.signal(signal.SIGTERM, lambda *_: instance.stop())
    ready.set()
    instance.run()


def publisher(endpoint: str, count: int, results: Any) -> None:
    configure_logging(level="warning", stream=sys.stderr)

    async def main() -> None:
        actor = Actor(name="bench-publisher", broker=endpoint)
        await actor.start()
        figures = {}
        for qos in ORDER:
            for _ in range(500):  # warm up
                await actor.emit("bench.warm", PAYLOAD, qos=qos)
            start = time.perf_counter()
            for _ in range(count):
                await actor.emit("bench.x", PAYLOAD, qos=qos)
            if qos == "reliable":
                left = await actor.flush(120)
                assert left == 0, f"{left} durable events were not acknowledged"
            else:
                await actor.flush(30)  # the broker has them all
            figures[qos] = count / (time.perf_counter() - start)
        results.put(figures)
        await actor.stop()

    asyncio.run(main())


def one_run(count: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    tmp = tempfile.mkdtemp(prefix="loom-bench-", dir="/tmp")
    endpoint = f"ipc://{tmp}/broker"
    ready, results = ctx.Event(), ctx.Queue()
    server = ctx.Process(target=broker, args=(endpoint, f"{tmp}/data", ready))
    server.start()
    ready.wait(30)
    client = ctx.Process(target=publisher, args=(endpoint, count, results))
    client.start()
    try:
        figures: dict[str, float] = results.get(timeout=300)
    finally:
        client.join(30)
        server.terminate()
        server.join(30)
        shutil.rmtree(tmp, ignore_errors=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--count", type=int, default=50_000)
    args = parser.parse_args()
    runs = []
    for run in range(args.runs):
        runs.append(one_run(args.count))
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)
    med = {qos: statistics.median(r[qos] for r in runs) for qos in ("standard", "reliable")}
    print(
        f"\nLoom durable publish bench: ipc, 64 B, {args.count:,} events/run, "
        f"medians of {args.runs} runs, {os.cpu_count()} cores\n"
    )
    print("| emit | events/s (median) | min..max | ratio |")
    print("|---|---|---|---|")
    for qos in ("standard", "reliable"):
        values = [r[qos] for r in runs]
        print(
            f"| qos={qos} | {med[qos]:,.0f} | {min(values):,.0f}..{max(values):,.0f} "
            f"| {med[qos] / med['standard']:.2f} |"
        )


if __name__ == "__main__":
    main()
