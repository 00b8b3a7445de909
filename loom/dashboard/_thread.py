"""A dashboard on its own event loop in a daemon thread: how ``loom-broker`` serves one.

The dashboard is a client of the broker like any other (it asks STATS, DIRECTORY and
RECENT over its own socket and zmq context), so the broker's loop shares nothing with it
but the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import Future
from typing import Any

import zmq

from loom.dashboard._server import Dashboard
from loom.session import KeySpec, reachable_endpoint

__all__ = ["DashboardThread"]


class DashboardThread:
    """Serve a :class:`Dashboard` of ``broker`` from a thread.

    Args:
        broker: the broker's control endpoint (a wildcard bind address is fine).
        host: the address the page is served on.
        port: its port (0: any free one).
        log: a structlog logger.
        interval: seconds between updates.
    """

    def __init__(
        self,
        broker: str,
        host: str,
        port: int,
        *,
        log: Any,
        interval: float = 1.0,
        token: str | None = None,
        key: KeySpec = None,
    ):
        self.broker = reachable_endpoint(broker)
        self._token = token
        self._key = key
        self.url: str | None = None
        self._at = (host, port)
        self._log = log
        self._interval = interval
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Event | None = None
        self._stopping = False

    def start(self, timeout: float = 10.0) -> str:
        """Start serving; returns the page's URL.

        Raises:
            OSError: the address cannot be bound.
            TimeoutError: the server did not start within ``timeout`` seconds.
        """
        ready: Future[str] = Future()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(ready),), name="loom-dashboard", daemon=True
        )
        self._thread.start()
        try:
            self.url = ready.result(timeout)
        except TimeoutError:
            self.stop()
            raise
        return self.url

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and wait for the thread (at most ``timeout`` seconds)."""
        self._stopping = True  # seen by a thread that has not reached its loop yet
        loop, done = self._loop, self._done
        if loop is not None and done is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(done.set)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    async def _serve(self, ready: Future[str]) -> None:
        context: zmq.Context[Any] = zmq.Context()
        dashboard = Dashboard(
            self.broker,
            context=context,
            log=self._log,
            interval=self._interval,
            token=self._token,
            key=self._key,
        )
        self._loop, self._done = asyncio.get_running_loop(), asyncio.Event()
        try:
            try:
                url = await dashboard.start(*self._at)
            except BaseException as exc:
                ready.set_exception(exc)
                return
            ready.set_result(url)
            if not self._stopping:  # stop() may have come before the loop existed
                await self._done.wait()
        finally:
            await dashboard.stop()
            context.term()
