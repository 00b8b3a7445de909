"""How a long-running peer (actor, worker, bridge, desktop) serves until it is told to
stop: the one signal-handling loop every ``run()`` uses."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

__all__ = ["serve_until_signalled"]


async def serve_until_signalled(
    start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
) -> None:
    """Run ``start()``, then serve until SIGINT or SIGTERM, then ``stop()``. A signal that
    comes while ``start()`` still waits (a broker slow to answer) cancels it and stops at
    once; ``stop()`` runs in every case, after a failed start too."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    starting = asyncio.ensure_future(start())
    signalled = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
        try:
            await starting
            await signalled
        except asyncio.CancelledError:
            return
    finally:
        signalled.cancel()
        await stop()
