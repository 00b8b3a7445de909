"""Scatter-gather against plain request/reply, in one run.

    python bench/collab.py [--runs 5] [--responders 10] [--requests 300]

A broker and --responders answering actors (two processes, the actors spread over them)
on ipc; an asking actor in this process measures, one at a time:

  (a) `request(topic)`: the first reply of one responder                    (baseline)
  (b) `gather(topic, policy="all")`: every responder's reply, each request fanned out
      to all of them by the broker (the expected responders given, as a caller that
      knows its team does; the directory lookup is measured apart)
  (c) `gather(topic, policy=1)`: the first of all the replies
  (d) requests/s through a queue group of 1, 2 and 4 members (`@on(..., group=...)`:
      each request to one member, round robin), --window requests in flight, against
      plain request/reply to one responder with the same window

Figures are medians over --runs; ratios are to (a) (latency) and to plain request/reply
(requests/s).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tools import loom_broker, percentile, scratch  # beside this file

from loom import Actor, Event
from loom.logs import configure_logging


def responders(endpoint: str, names: list[str], ready: Any) -> None:
    configure_logging(level="warning", stream=sys.stderr)

    async def main() -> None:
        actors = []
        for name in names:
            actor = Actor(name=name, broker=endpoint)

            def answer(event: Event, me: str = name) -> dict[str, Any]:
                return {"by": me, "n": event.data}

            await actor.subscribe("team.ask", answer)
            if name == names[0] and names[0] == "r0":
                await actor.subscribe("solo.ask", answer)
            index = int(name[1:])
            for size in (1, 2, 4):  # r0 in every group, r1 in two, r2 and r3 in one
                if index < size:
                    await actor.subscribe(f"group{size}.ask", answer, group=f"g{size}")
            await actor.start()
            actors.append(actor)
        ready.set()
        await asyncio.Event().wait()  # until terminated

    asyncio.run(main())


async def timed(call: Callable[[int], Awaitable[Any]], count: int) -> list[int]:
    for i in range(30):  # warm up
        await call(i)
    latencies = []
    for i in range(count):
        start = time.perf_counter_ns()
        await call(i)
        latencies.append(time.perf_counter_ns() - start)
    return latencies


async def rate(asker: Actor, topic: str, args: argparse.Namespace) -> float:
    """Requests/s with --window in flight."""
    todo = iter(range(args.requests * 4))

    async def lane() -> None:
        for i in todo:
            await asker.request(topic, i, timeout=10)

    start = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(args.window)))
    return args.requests * 4 / (time.perf_counter() - start)


def one_run(endpoint: str, args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    ready = mp.Event()
    procs = [mp.Process(target=loom_broker, args=(endpoint, ready))]
    procs[0].start()
    assert ready.wait(30)
    names = [f"r{i}" for i in range(args.responders)]
    halves = [names[0::2], names[1::2]]
    events = []
    for part in halves:
        event = mp.Event()
        events.append(event)
        procs.append(mp.Process(target=responders, args=(endpoint, part, event)))
        procs[-1].start()
    for event in events:
        assert event.wait(60)

    async def measure() -> dict[str, tuple[float, float]]:
        asker = Actor(name="asker", broker=endpoint)
        await asker.start()
        try:
            results = {}

            async def solo(i: int) -> Any:
                return await asker.request("solo.ask", i, timeout=10)

            async def every(i: int) -> Any:
                gathered = await asker.gather("team.ask", i, timeout=10, expect=names)
                assert gathered.complete and len(gathered.replies) == len(names)

            async def first(i: int) -> Any:
                gathered = await asker.gather("team.ask", i, policy=1, timeout=10, expect=names)
                assert gathered.complete

            async def looked_up(i: int) -> Any:
                gathered = await asker.gather("team.ask", i, timeout=10)
                assert gathered.complete

            for label, call in (
                ("request", solo),
                ("gather all", every),
                ("gather first", first),
                ("gather all, directory", looked_up),
            ):
                latencies = await timed(call, args.requests)
                results[label] = (percentile(latencies, 0.5), percentile(latencies, 0.99))
            for topic in ("solo.ask", "group1.ask", "group2.ask", "group4.ask"):
                results[f"rate {topic}"] = (await rate(asker, topic, args), 0.0)
            return results
        finally:
            await asker.stop()

    try:
        return asyncio.run(measure())
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.join(15)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--responders", type=int, default=10)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--window", type=int, default=16)
    args = parser.parse_args()
    tmp = scratch()
    runs: list[dict[str, tuple[float, float]]] = []
    for run in range(args.runs):
        runs.append(one_run(f"ipc://{tmp}/c{run}", args))
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)
    labels = list(runs[0])
    med = {k: [statistics.median(r[k][i] for r in runs) for i in range(2)] for k in labels}
    rates = {k.removeprefix("rate "): v[0] for k, v in med.items() if k.startswith("rate ")}
    med = {k: v for k, v in med.items() if not k.startswith("rate ")}
    base = med["request"]
    print(
        f"Scatter-gather to {args.responders} responders against one request, medians of "
        f"{args.runs} runs ({args.requests} requests each, one at a time, ipc, secure broker)"
    )
    print("| path | p50 us | p99 us | p50 ratio | p99 ratio |")
    print("|---|---|---|---|---|")
    for label, (p50, p99) in med.items():
        print(
            f"| {label} | {p50:,.0f} | {p99:,.0f} | {p50 / base[0]:.2f}x | {p99 / base[1]:.2f}x |"
        )
    print(f"\nRequests/s, {args.window} in flight (members spread over two processes)\n")
    print("| path | requests/s | ratio |")
    print("|---|---|---|")
    names = {
        "solo.ask": "plain request/reply, 1 responder",
        "group1.ask": "queue group of 1",
        "group2.ask": "queue group of 2",
        "group4.ask": "queue group of 4",
    }
    for topic, value in rates.items():
        print(f"| {names[topic]} | {value:,.0f} | {value / rates['solo.ask']:.2f}x |")


if __name__ == "__main__":
    mp.set_start_method("spawn")
    main()
