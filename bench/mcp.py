"""MCP tool calls: the SDK's client straight to the server, against the same tool called
through the mesh (ToolClient -> loom-broker -> `loom mcp attach`'s bridge -> the server),
per transport, in one run.

    python bench/mcp.py [--runs 5] [--sequential 300] [--pipelined 1000] [--window 8]

The server is the official SDK's MCPServer with one tool adding two integers
(bench/data/mcp_server.py), spoken to over stdio and over Streamable HTTP on loopback.

  (a) direct: `mcp.Client` -> the server                               (baseline)
  (b) mesh: ToolClient -> loom-broker (secure, the default) -> McpBridge -> the server

Every role runs in its own process. Sequential: one call at a time, p50/p99. Pipelined:
--window calls in flight, calls/s. Figures are medians over --runs; ratios are (b)/(a).
Goal: mesh p50 within 1.5x of direct for stdio.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is called mcp.py, and Python puts its directory first on sys.path: the SDK's
# `mcp` package must be found instead. The directory goes back at the end (for tools.py).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
import mcp  # noqa: F401  (the SDK, imported while this file cannot shadow it)

sys.path.append(str(_HERE))

import argparse
import asyncio
import multiprocessing as mp
import queue
import socket
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tools import loom_broker, percentile, scratch

from loom import ToolClient
from loom.logs import configure_logging
from loom.mcp import McpBridge, McpServerSettings

SERVER = str(Path(__file__).parent / "data" / "mcp_server.py")

Call = Callable[[int], Awaitable[Any]]


async def measure(call: Call, sequential: int, pipelined: int, window: int) -> tuple[Any, ...]:
    for i in range(50):  # warm up
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings(transport: str, port: int) -> McpServerSettings:
    if transport == "stdio":
        return McpServerSettings(command=sys.executable, args=[SERVER])
    return McpServerSettings(url=f"http://127.0.0.1:{port}/mcp", transport="http")


def direct(transport: str, port: int, sizes: tuple[int, int, int], results: Any) -> None:
    from mcp import Client, StdioServerParameters

    async def main() -> None:
        target: Any = f"http://127.0.0.1:{port}/mcp"
        if transport == "stdio":
            target = StdioServerParameters(command=sys.executable, args=[SERVER])
        async with Client(target, cache=None) as client:

            async def call(i: int) -> Any:
                result = await client.call_tool("add", {"a": i, "b": 1})
                return result.structured_content["result"]  # type: ignore[index]

            results.put(await measure(call, *sizes))

    asyncio.run(main())


def bridge(endpoint: str, transport: str, port: int) -> None:
    configure_logging(level="warning", stream=sys.stderr)
    McpBridge({"b": settings(transport, port)}, broker=endpoint, name="bench-bridge").run()


def mesh(endpoint: str, sizes: tuple[int, int, int], results: Any) -> None:
    configure_logging(level="warning", stream=sys.stderr)

    async def main() -> None:
        async with await ToolClient.connect(endpoint, name="bench") as client:
            while (await client.directory()).tool("b.add") is None:
                await asyncio.sleep(0.02)

            async def call(i: int) -> Any:
                result = await client.call("b.add", {"a": i, "b": 1})
                return result["structured"]["result"]

            results.put(await measure(call, *sizes))

    asyncio.run(main())


def scenario(path: str, transport: str, tmp: str, args: argparse.Namespace) -> tuple[Any, ...]:
    sizes = (args.sequential, args.pipelined, args.window)
    results: Any = mp.Queue()
    port = free_port()
    http = None
    children: list[mp.Process] = []
    try:
        if transport == "http":  # one server process, as a service would be
            http = subprocess.Popen(
                [sys.executable, SERVER, "http", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 30
            while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
                assert time.monotonic() < deadline, "the MCP server did not start"
                time.sleep(0.05)
        if path == "direct":
            children.append(mp.Process(target=direct, args=(transport, port, sizes, results)))
            children[-1].start()
        else:
            endpoint = f"ipc://{tmp}/m{time.monotonic_ns()}"
            ready = mp.Event()
            children.append(mp.Process(target=loom_broker, args=(endpoint, ready)))
            children[-1].start()
            assert ready.wait(30), "the broker did not start"
            children.append(mp.Process(target=bridge, args=(endpoint, transport, port)))
            children.append(mp.Process(target=mesh, args=(endpoint, sizes, results)))
            for child in children[1:]:
                child.start()
        deadline = time.monotonic() + 300
        while True:  # a child that failed ends the wait (its traceback is on stderr)
            try:
                figures: tuple[Any, ...] = results.get(timeout=0.5)
                return figures
            except queue.Empty:
                failed = [c.name for c in children if c.exitcode not in (None, 0)]
                if failed or time.monotonic() > deadline:
                    raise SystemExit(f"bench/mcp.py: {path} over {transport} failed") from None
    finally:
        for child in reversed(children):
            if child.is_alive():
                child.terminate()
            child.join(15)
            if child.is_alive():
                child.kill()
        if http is not None:
            http.terminate()
            http.wait(15)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sequential", type=int, default=300)
    parser.add_argument("--pipelined", type=int, default=1000)
    parser.add_argument("--window", type=int, default=8)
    args = parser.parse_args()
    tmp = scratch()
    kinds = [(p, t) for t in ("stdio", "http") for p in ("direct", "mesh")]
    figures: dict[tuple[str, str], list[tuple[float, float, float]]] = {k: [] for k in kinds}
    for run in range(args.runs):
        for kind, runs in figures.items():
            latencies, rate = scenario(*kind, tmp, args)
            runs.append((percentile(latencies, 0.5), percentile(latencies, 0.99), rate))
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)
    report(args, figures)


def report(
    args: argparse.Namespace, figures: dict[tuple[str, str], list[tuple[float, float, float]]]
) -> None:
    med = {
        k: [statistics.median(run[i] for run in v) for i in range(3)] for k, v in figures.items()
    }
    print(
        f"MCP tool calls, medians of {args.runs} runs ({args.sequential} sequential, "
        f"{args.pipelined} pipelined over {args.window}); ratios: mesh / direct"
    )
    print("| transport | path | p50 us | p99 us | calls/s | p50 ratio | p99 ratio | rate ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for (path, transport), (p50, p99, rate) in med.items():
        base = med[("direct", transport)]
        ratios = f"{p50 / base[0]:.2f}x | {p99 / base[1]:.2f}x | {rate / base[2]:.2f}x"
        if path == "direct":
            ratios = "1.00x | 1.00x | 1.00x"
        print(f"| {transport} | {path} | {p50:,.0f} | {p99:,.0f} | {rate:,.0f} | {ratios} |")


if __name__ == "__main__":
    mp.set_start_method("spawn")
    main()
