"""Broker restart: time until every actor and worker has rejoined, in one run.

    python bench/reconnect.py [--runs 5] [--actors 4] [--workers 2] [--heartbeat 1.0]

Actors (tests/actors/echo.py) and workers (tests/workers/sample.py) run as processes on a
broker; the broker is SIGKILLed and a new one started on the same endpoint. Measured from
the moment the new broker answers HELLO until its directory lists every peer again.
Baseline: the same wait for one raw pyzmq DEALER that re-sends a request every 10 ms (the
floor set by zmq's own reconnection). Peers only learn of the restart from their next
heartbeat, so expect up to one interval plus the rejoin round trips.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

from loom.protocol import HELLO, VERSION, decode_control, encode_control
from loom.session import peer_key, secure_client, wait_for_broker
from loom.tools import ToolClient

ROOT = Path(__file__).parent.parent
PY = sys.executable
WORKER = [PY, "-m", "loom.cli.main", "worker", str(ROOT / "tests/workers/sample.py")]


def start_broker(endpoint: str, heartbeat: float) -> subprocess.Popen[bytes]:
    args = [PY, "-m", "loom.cli.broker", "--endpoint", endpoint, "--heartbeat", str(heartbeat)]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def peers(endpoint: str) -> int:
    async with await ToolClient.connect(endpoint, name="bench", timeout=2) as client:
        found = await client.directory()
    return len(found.actors) + len(found.workers)


async def wait_for(endpoint: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while await peers(endpoint) < count:
        if time.monotonic() > deadline:
            raise TimeoutError("peers did not rejoin")
        await asyncio.sleep(0.01)


def raw_rejoin(endpoint: str) -> float:
    """A raw DEALER asking HELLO every 10 ms across a restart; seconds to the answer."""
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    secure_client(dealer, peer_key())  # the Loom home's keys, as every local peer
    dealer.connect(endpoint)
    broker = start_broker(endpoint, 1.0)
    asyncio.run(until_answers(endpoint))
    broker.kill()
    broker.wait()
    broker = start_broker(endpoint, 1.0)
    asyncio.run(until_answers(endpoint))
    start = time.monotonic()
    while True:
        dealer.send_multipart(encode_control(HELLO, {"version": VERSION, "name": "raw"}))
        if dealer.poll(10):
            decode_control(dealer.recv_multipart())
            break
    elapsed = time.monotonic() - start
    broker.terminate()
    broker.wait()
    ctx.destroy(0)
    return elapsed


async def until_answers(endpoint: str) -> None:
    await wait_for_broker(endpoint, timeout=30)


def one_run(endpoint: str, args: argparse.Namespace) -> float:
    broker = start_broker(endpoint, args.heartbeat)
    asyncio.run(until_answers(endpoint))
    children = [
        subprocess.Popen(
            [PY, str(ROOT / "tests/actors/echo.py"), endpoint, f"echo{i}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(args.actors)
    ]
    children += [
        subprocess.Popen(
            [*WORKER, "--broker", endpoint, "--name", f"w{i}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(args.workers)
    ]
    try:
        total = args.actors + args.workers
        asyncio.run(wait_for(endpoint, total))
        os.kill(broker.pid, signal.SIGKILL)
        broker.wait()
        broker = start_broker(endpoint, args.heartbeat)
        asyncio.run(until_answers(endpoint))
        start = time.monotonic()
        asyncio.run(wait_for(endpoint, total))
        return time.monotonic() - start
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait()
        broker.terminate()
        broker.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--actors", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--heartbeat", type=float, default=1.0)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="loom-bench-", dir="/tmp")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    loom_times, raw_times = [], []
    for run in range(args.runs):
        loom_times.append(one_run(f"ipc://{tmp}/r{run}", args))
        raw_times.append(raw_rejoin(f"ipc://{tmp}/raw{run}"))
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)
    loom_med, raw_med = statistics.median(loom_times), statistics.median(raw_times)
    print(
        f"\nBroker restart, ipc, {args.actors} actors + {args.workers} workers, heartbeat "
        f"{args.heartbeat:g} s, medians of {args.runs} runs, {os.cpu_count()} cores\n"
    )
    print("| path | seconds (median) | min..max | ratio to raw | heartbeats |")
    print("|---|---|---|---|---|")
    print(
        f"| raw DEALER re-asking every 10 ms | {raw_med:.3f} | {min(raw_times):.3f}.."
        f"{max(raw_times):.3f} | 1.00 | {raw_med / args.heartbeat:.2f} |"
    )
    print(
        f"| every Loom peer rejoined | {loom_med:.3f} | {min(loom_times):.3f}.."
        f"{max(loom_times):.3f} | {loom_med / raw_med:.1f} | {loom_med / args.heartbeat:.2f} |"
    )


if __name__ == "__main__":
    main()
