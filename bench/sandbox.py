"""Sandboxed against unsandboxed tool calls, with the raw pyzmq baseline, in one run.

    python bench/sandbox.py [--runs 5] [--sequential 500] [--pipelined 2000] [--window 8]

Every role runs in its own process; the tool adds two integers.

  (a) a DEALER client -> a ROUTER server, direct (bench/tools.py's baseline)
  (b) ToolClient -> loom-broker -> Worker, the tool runs in the worker   (unsandboxed)
  (c) the same, the tool declared with the default Sandbox(): each call runs in a process
      forked from the sandbox launcher (rlimits, user namespace, Landlock, seccomp...)

Sequential: one call at a time, back to back, round-trip p50/p99. Spaced: one call every
--gap ms (an agent calls a tool, then thinks), p50. Pipelined: --window calls in flight,
calls/s. Figures are medians over --runs repetitions; ratios are to (a), and (c) to (b).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from tools import loom_broker, measure, percentile, raw_client, raw_server

from loom import Sandbox, ToolClient, Worker, tool
from loom.logs import configure_logging


@tool(name="bench.add", idempotent=True, concurrency=8)
async def add(a: int, b: int) -> int:
    """Add two integers (in the worker)."""
    return a + b


@tool(name="bench.add_boxed", idempotent=True, concurrency=8, sandbox=Sandbox())
async def add_boxed(a: int, b: int) -> int:
    """Add two integers (in a sandboxed process per call)."""
    return a + b


def worker(endpoint: str) -> None:
    configure_logging(level="warning", stream=sys.stderr)
    Worker([add, add_boxed], broker=endpoint, name="bench-worker").run()


def client(endpoint: str, name: str, sizes: tuple[int, int, int], gap: float, results: Any) -> None:
    configure_logging(level="warning", stream=sys.stderr)

    async def main() -> None:
        async with await ToolClient.connect(endpoint, name="bench") as c:
            while (await c.directory()).tool(name) is None:
                await asyncio.sleep(0.01)

            def call(i: int) -> Awaitable[Any]:
                return c.call(name, {"a": i, "b": 1})

            latencies, rate = await measure(call, *sizes)
            spaced = []
            for i in range(sizes[0] // 4):
                await asyncio.sleep(gap / 1000)
                start = time.perf_counter_ns()
                await call(i)
                spaced.append(time.perf_counter_ns() - start)
            results.put((latencies, rate, spaced))

    asyncio.run(main())


def scenario(
    kind: str, endpoint: str, args: argparse.Namespace
) -> tuple[list[int], float, list[int]]:
    ctx = mp.get_context("spawn")
    ready, results = ctx.Event(), ctx.Queue()
    sizes = (args.sequential, args.pipelined, args.window)
    if kind == "raw":
        servers = [ctx.Process(target=raw_server, args=(endpoint, ready))]
        caller = ctx.Process(target=raw_client, args=(endpoint, *sizes, results))
    else:
        servers = [
            ctx.Process(target=loom_broker, args=(endpoint, ready)),
            ctx.Process(target=worker, args=(endpoint,)),
        ]
        name = "bench.add" if kind == "plain" else "bench.add_boxed"
        caller = ctx.Process(target=client, args=(endpoint, name, sizes, args.gap, results))
    servers[0].start()
    ready.wait(30)
    for proc in [*servers[1:], caller]:
        proc.start()
    try:
        found = results.get(timeout=600)
    finally:
        caller.join(10)
        for proc in (caller, *reversed(servers)):
            if proc.is_alive():
                proc.terminate()
            proc.join(15)
    return (*found, []) if kind == "raw" else found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sequential", type=int, default=500)
    parser.add_argument("--pipelined", type=int, default=2000)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--gap", type=float, default=20.0, help="ms between spaced calls")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="loom-bench-", dir="/tmp")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    figures: dict[str, list[tuple[float, ...]]] = {"raw": [], "plain": [], "boxed": []}
    for run in range(args.runs):
        for kind, runs in figures.items():
            latencies, rate, spaced = scenario(kind, f"ipc://{tmp}/s{time.monotonic_ns()}", args)
            gap = percentile(spaced, 0.5) if spaced else 0.0
            runs.append((percentile(latencies, 0.5), percentile(latencies, 0.99), rate, gap))
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)
    med = {
        k: [statistics.median(run[i] for run in v) for i in range(4)] for k, v in figures.items()
    }
    print(
        f"\nLoom sandbox bench: ipc, {args.sequential:,} sequential + {args.pipelined:,} "
        f"pipelined calls (window {args.window}), medians of {args.runs} runs, "
        f"{os.cpu_count()} cores\n"
    )
    print(
        "| path | p50 us | p99 us | p50 vs (a) | p50 vs (b) | spaced p50 us | vs (b) "
        "| calls/s pipelined | vs (b) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rows = [
        ("(a) DEALER <-> ROUTER direct", "raw"),
        ("(b) broker -> Worker, unsandboxed", "plain"),
        ("(c) broker -> Worker -> sandboxed process per call", "boxed"),
    ]
    for label, kind in rows:
        p50, p99, rate, spaced = med[kind]
        spaced_cells = f"{spaced:,.0f} | {spaced / med['plain'][3]:.1f}x" if spaced else "- | -"
        print(
            f"| {label} | {p50:,.0f} | {p99:,.0f} | {p50 / med['raw'][0]:.1f}x | "
            f"{p50 / med['plain'][0]:.1f}x | {spaced_cells} | {rate:,.0f} | "
            f"{rate / med['plain'][2]:.2f}x |"
        )


if __name__ == "__main__":
    main()
