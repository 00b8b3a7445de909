"""Tools for the tool-plane tests, served with `loom worker tests/workers/sample.py`.

Tools that the tests must observe from outside write marker files (a path in the args).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from loom import ToolContext, tool


@tool(name="sample.add", idempotent=True)
async def add(a: int, b: int = 1) -> int:
    """Add two integers.

    Args:
        a: the first.
        b: the second.
    """
    return a + b


@tool(name="sample.whoami", idempotent=True, concurrency=1)
def whoami() -> int:
    """The worker's pid (a plain def: runs in the worker's thread pool)."""
    return os.getpid()


@tool(name="sample.work", concurrency=4)
async def work(ms: int = 50) -> int:
    """Sleep ``ms`` milliseconds, then return the worker's pid (not idempotent)."""
    await asyncio.sleep(ms / 1000)
    return os.getpid()


async def _hold(marker: str, seconds: float) -> int:
    with Path(marker).open("a") as out:
        out.write(f"{os.getpid()}\n")
    await asyncio.sleep(seconds)
    return os.getpid()


@tool(name="sample.hold_idempotent", idempotent=True, concurrency=1)
async def hold_idempotent(marker: str, seconds: float) -> int:
    """Append the pid to ``marker``, sleep, return the pid."""
    return await _hold(marker, seconds)


@tool(name="sample.hold", concurrency=1, timeout=0.5)
async def hold(marker: str, seconds: float) -> int:
    """Append the pid to ``marker``, sleep without reporting progress, return the pid."""
    return await _hold(marker, seconds)


@tool(name="sample.crawl", timeout=0.5)
async def crawl(steps: int, interval: float, ctx: ToolContext) -> int:
    """Report progress every ``interval`` seconds for ``steps`` steps."""
    for step in range(steps):
        await asyncio.sleep(interval)
        ctx.progress({"step": step + 1})
    return steps


@tool(name="sample.wait_cancel")
async def wait_cancel(marker: str) -> None:
    """Write ``started`` to ``marker``, wait a minute; on cancellation write ``cancelled``."""
    Path(marker).write_text("started")
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        Path(marker).write_text("cancelled")
        raise


@tool(name="sample.blob")
def blob(size: int) -> bytes:
    """``size`` bytes."""
    return b"x" * size


@tool(name="sample.boom")
def boom(message: str) -> None:
    """Raise ValueError(message)."""
    raise ValueError(message)


@tool(name="sample.gives_up")
async def gives_up() -> None:
    """Cancelled from within (a task it awaited was cancelled): answers CANCELLED."""
    raise asyncio.CancelledError


@tool(name="sample.guarded", approval=True)
async def guarded(marker: str) -> str:
    """Append the pid to ``marker`` (needs an approver's yes first)."""
    with Path(marker).open("a") as out:
        out.write(f"{os.getpid()}\n")
    return "done"


@tool(name="sample.log", idempotent=True)
async def log(lines: int) -> str:
    """A log of ``lines`` lines; line 137 holds the error code E-4711."""
    return "\n".join(
        f"2026-11-21T10:{i // 60:02d}:{i % 60:02d} job step {i} "
        + ("FAILED with E-4711" if i == 137 else "ok")
        for i in range(lines)
    )
