"""A hostile peer sends random and structurally wrong frames on every socket of a real
broker; the broker keeps serving real actors and workers, and holds no more memory."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import HERE, Proc, broker_stats, spawn_actor, start_broker, start_worker

from loom import Actor, ToolClient

FUZZER = HERE / "clients" / "fuzzer.py"
FRAMES = 400
"""Messages per plane per seed (five planes, two seeds: ~4000 messages a test)."""


def fuzz(endpoint: str, seed: int, frames: int = FRAMES) -> dict[str, int]:
    """Run the fuzzer as a process of its own; its summary: messages sent per plane."""
    import subprocess

    done = subprocess.run(
        [sys.executable, str(FUZZER), endpoint, "--frames", str(frames), "--seed", str(seed)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return dict(json.loads(done.stdout))


@pytest.mark.timeout(180)
def test_the_broker_survives_fuzzing_and_keeps_serving(
    spawn: Callable[..., Proc], short_tmp: Path
) -> None:
    """Every plane fuzzed (publish, subscribe, control, tool plane, durable); then a real
    actor-to-actor request and a real tool call work, the broker's memory stayed put,
    and it exits cleanly."""
    endpoint = f"ipc://{short_tmp}/b"
    broker = start_broker(
        spawn, endpoint, "--heartbeat", "0.2", "--data-dir", str(short_tmp / "data")
    )
    spawn_actor(spawn, "echo", endpoint)
    start_worker(spawn, endpoint, "w1")
    process = psutil.Process(broker.pid)
    before = process.memory_info().rss
    sent = [fuzz(endpoint, seed) for seed in (1, 2)]
    assert all(count == FRAMES for summary in sent for count in summary.values())
    after = process.memory_info().rss

    async def still_serving() -> tuple[Any, Any]:
        client = Actor(name="client", broker=endpoint)
        await client.start()
        try:
            reply = await client.request("ping.after", {"n": 1}, timeout=10)
        finally:
            await client.stop()
        async with await ToolClient.connect(endpoint) as tools:
            result = await tools.call("sample.add", {"a": 2, "b": 3}, timeout=10)
        return reply, result

    reply, result = asyncio.run(still_serving())
    assert reply["ok"] is True and reply["data"] == {"n": 1}
    assert result == 5
    stats = broker_stats(endpoint)
    assert sum(stats["control_drops"].values()) > 0
    assert sum(stats["drops"].values()) > 0
    assert stats["totals"]["malformed"] > 0
    assert after - before < 64 << 20, (before, after)
    assert broker.stop() == 0, broker.output
    assert "Traceback" not in broker.output
