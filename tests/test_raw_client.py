"""A client built only from docs/protocol.md (pyzmq + msgpack) talks with Loom actors."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from conftest import Proc, spawn_actor

from loom import Actor, Event

RAW_CLIENT = Path(__file__).parent / "clients" / "raw_client.py"


def test_raw_client_exchanges_events_with_an_actor(broker: str, spawn: Callable[..., Proc]) -> None:
    """The raw client's request is answered, it hears the actor's event, and an Actor
    hears the raw client's event."""
    spawn_actor(spawn, "echo", broker)
    source = RAW_CLIENT.read_text()
    assert "import loom" not in source and "from loom" not in source

    async def body() -> tuple[dict[str, object], list[Event]]:
        heard: list[Event] = []
        listener = Actor(name="listener", broker=broker)
        await listener.subscribe("raw.*", heard.append)
        await listener.start()
        try:
            result = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, str(RAW_CLIENT), broker],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert result.returncode == 0, result.stderr
            deadline = time.monotonic() + 5
            while not heard and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            return json.loads(result.stdout), heard
        finally:
            await listener.stop()

    summary, heard = asyncio.run(body())
    assert summary["reply"] == {
        "kind": 2,
        "sender": "echo",
        "data": {"ok": True, "data": {"from": "raw"}, "from": "echo"},
    }
    assert summary["pong"] == {"data": {"from": "raw"}, "sender": "echo"}
    assert [(e.topic, e.sender, e.data) for e in heard] == [("raw.said", "raw", {"hi": 1})]
