"""``context.read`` served by a real ``loom worker`` process, each call in the sandbox."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Proc, free_tcp_endpoint, start_broker, start_worker

from loom import ToolClient
from loom.cognition.context import OffloadStore
from loom.errors import ToolFailedError


def test_context_read_through_a_worker(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    """A sandboxed worker reads the jail's offload store, pages it and marks it read."""
    jail = tmp_path / "jail"
    jail.mkdir()
    store = OffloadStore(jail, clock=lambda: 5.0)
    ref = store.put("x" * 3000 + "RG-5031", tool="fs.read", step=6).ref
    endpoint = free_tcp_endpoint()
    broker = start_broker(spawn, endpoint)
    start_worker(
        spawn,
        endpoint,
        "context",
        "--jail",
        str(jail),
        target="loom.cognition.context._tool:context_read",
    )

    async def calls() -> tuple[dict[str, Any], str]:
        async with await ToolClient.connect(endpoint, name="context-test") as client:
            part = await client.call("context.read", {"ref": ref, "offset": 2990}, timeout=30)
            with pytest.raises(ToolFailedError) as caught:
                await client.call("context.read", {"ref": "offload://../../x"}, timeout=30)
            return part, caught.value.type_name

    part, refused = asyncio.run(calls())
    assert part == {"ref": ref, "offset": 2990, "size": 3007, "content": "x" * 10 + "RG-5031",
                    "next_offset": None}  # fmt: skip
    assert refused == "OffloadRefError"
    assert store.record(ref).last_read > 5.0
    assert broker.popen.poll() is None
