"""Tools across brokers federated through NATS: a tool served on A is listed and
callable on C, with progress, cancellation, deadlines and error codes intact."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Proc, eventually, start_worker, until
from federation_helpers import Cluster, federated, nats_cluster

from loom.errors import CallCancelledError, ToolFailedError, UnknownToolError
from loom.session import ToolClient

__all__ = ["nats_cluster"]  # the fixture, imported for pytest

pytestmark = pytest.mark.timeout(120)


async def listed(client: ToolClient, tool: str) -> Any:
    """The directory's entry for ``tool`` (None while it is not listed)."""
    directory = await client.directory()
    return next((t for t in directory.tools if t.name == tool), None)


def test_a_tool_on_one_broker_is_called_from_another(
    spawn: Callable[..., Proc], nats_cluster: Cluster, tmp_path: Path
) -> None:
    a, _ = federated(spawn, "A", nats_cluster.nodes[0].url)
    c, _ = federated(spawn, "C", nats_cluster.nodes[2].url)
    start_worker(spawn, a, "tools-a")

    async def body() -> None:
        async with await ToolClient.connect(c) as client:
            entry = await eventually(lambda: listed(client, "sample.add"), timeout=15)
            assert entry.brokers == ["A"]
            assert entry.workers == ["federation"]
            assert entry.idempotent  # the spec crossed with the tool
            assert await client.call("sample.add", {"a": 2, "b": 3}) == 5

            steps: list[Any] = []  # each report pushes the 0.5 s lease out, across NATS
            assert (
                await client.call(
                    "sample.crawl", {"steps": 6, "interval": 0.2}, on_progress=steps.append
                )
                == 6
            )
            assert steps == [{"step": n} for n in range(1, 7)]

            with pytest.raises(ToolFailedError, match="kaboom"):
                await client.call("sample.boom", {"message": "kaboom"})
            with pytest.raises(UnknownToolError):
                await client.call("sample.nowhere", {})

            marker = tmp_path / "marker"
            call = asyncio.ensure_future(client.call("sample.wait_cancel", {"marker": str(marker)}))
            await until(marker.exists, timeout=10)
            call.cancel()
            with pytest.raises((asyncio.CancelledError, CallCancelledError)):
                await call
            await until(lambda: marker.read_text() == "cancelled", timeout=10)

    asyncio.run(body())
