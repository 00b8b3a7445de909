"""The dashboard's web server (aiohttp) and the poller that feeds it from a broker.

The poller is a control-plane client like ``loom stats``: every ``interval`` it asks the
broker for STATS, DIRECTORY and RECENT (what passed through its ring buffers since the
last look) and folds the answers into a :class:`~loom.dashboard._view.MeshView`. Each
state is encoded once and pushed to every open page as a Server-Sent Event; a slow page
gets only the newest state. The broker does no work for the dashboard beyond answering
those three commands once per interval, whatever the number of pages.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import zmq
from aiohttp import web

from loom.dashboard._view import MeshView
from loom.errors import LoomError
from loom.protocol import DIRECTORY, RECENT, STATS
from loom.session import KeySpec, Session

__all__ = ["Dashboard"]

STATIC = Path(str(resources.files("loom.dashboard") / "static"))
"""The page's assets, shipped in the package."""
RECENT_LIMIT = 1000
COOKIE = "loom_dashboard"


class Dashboard:
    """Serves a live view of the mesh behind ``broker``.

    Args:
        broker: the broker's control endpoint.
        context: the zmq context the poller's socket is made in.
        log: a structlog logger.
        interval: seconds between polls (and page updates).
        view: what the answers are folded into (a fresh :class:`MeshView` by default).
        token: what a visitor must show (``?token=`` once, then the cookie it gets);
            ``None`` serves anyone who reaches the port. Programs pass the Loom home's
            (``loom.keys.dashboard_token``); ``/healthz`` needs none.
        key: the CURVE keys its session presents (``Session``'s ``key``).
    """

    def __init__(
        self,
        broker: str,
        *,
        context: zmq.Context[Any],
        log: Any,
        interval: float = 1.0,
        view: MeshView | None = None,
        token: str | None = None,
        key: KeySpec = None,
    ) -> None:
        self.broker = broker
        self._token = token
        self._key = key
        self.view = view or MeshView()
        self.interval = interval
        self.url: str | None = None
        """Where the page is served, once :meth:`start` returned."""
        self.polls = 0
        self._context = context
        self._log = log
        self._session: Session | None = None
        self._listeners: set[asyncio.Queue[bytes | None]] = set()
        self._json = self._encode()
        self._event = _sse(self._json)
        self._runner: web.AppRunner | None = None
        self._poller: asyncio.Task[None] | None = None
        self.app = web.Application(middlewares=[self._guard] if token is not None else [])
        self.app.add_routes(
            [
                web.get("/", self._index),
                web.get("/api/state", self._state),
                web.get("/api/stream", self._stream),
                web.get("/healthz", self._health),
                web.static("/static", STATIC),
            ]
        )

    async def start(self, host: str = "127.0.0.1", port: int = 7780) -> str:
        """Start serving and polling; returns the page's URL (``port`` 0: any free one).

        Raises:
            OSError: the address cannot be bound (in use, not local).
        """
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = runner.addresses[0][1]
        query = f"?token={self._token}" if self._token is not None else ""
        self.url = f"http://{host}:{bound}/{query}"
        self._poller = asyncio.create_task(self._poll(), name="loom-dashboard-poll")
        self._log.info("dashboard serving", url=self.url, broker=self.broker)
        return self.url

    async def stop(self) -> None:
        """Stop polling, end the pages' streams, close the server."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        for queue in self._listeners:
            _offer(queue, None)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            self._session.close()
            self._session = None

    # --- polling ----------------------------------------------------------------------

    async def _poll(self) -> None:
        timeout = max(1.0, self.interval * 2)
        while True:
            try:
                await self._poll_once(timeout)
            except LoomError as exc:  # the broker is away or answered nonsense
                if self.view.connected:
                    self._log.warning("broker unavailable", broker=self.broker, error=str(exc))
                self.view.connected = False
            except Exception:  # a bug here must not freeze the page: log, keep polling
                self._log.exception("dashboard poll failed")
            self.polls += 1
            self._publish()
            await asyncio.sleep(self.interval)  # the refresh interval, not a wait

    async def _poll_once(self, timeout: float) -> None:
        session = self._session
        if session is None or session.closed:
            session = Session(
                self.broker,
                self._context,
                name="dashboard",
                role="client",
                log=self._log,
                key=self._key,
            )
            await session.open(timeout)
            self._session = session
        view = self.view
        stats = await session.request(STATS, {}, timeout=timeout)
        view.add_stats(stats, time.monotonic())
        directory = await session.request(DIRECTORY, {}, timeout=timeout)
        view.add_directory(directory)
        after, calls_after = view.cursor()
        body = {"after": after, "calls_after": calls_after, "limit": RECENT_LIMIT}
        recent = await session.request(RECENT, body, timeout=timeout)
        view.add_recent(recent)
        if not view.connected:
            self._log.info("broker connected", broker=self.broker)
        view.connected = True

    def _publish(self) -> None:
        try:
            self._json = self._encode()
        except Exception:  # a bug (or a NaN) must not end the poller: keep the last state
            self._log.exception("cannot build the dashboard's state")
            return
        self._event = _sse(self._json)  # framed once for every page
        for queue in self._listeners:
            _offer(queue, self._event)

    def _encode(self) -> bytes:
        state = self.view.state(time.time())
        state["broker"] = self.broker
        state["interval"] = self.interval
        return json.dumps(state, separators=(",", ":"), default=str, allow_nan=False).encode()

    # --- web --------------------------------------------------------------------------

    @web.middleware
    async def _guard(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Serve a visitor with the token (in the query, or the cookie the query set);
        answer 401 to others. ``/healthz`` is open (monitors)."""
        assert self._token is not None
        if request.path == "/healthz":
            return await handler(request)
        shown = request.query.get("token")
        if shown is None:
            shown = request.cookies.get(COOKIE, "")
        if not hmac.compare_digest(shown.encode(), self._token.encode()):
            return web.Response(
                status=401,
                text="401: this dashboard needs its token: open the URL Loom printed"
                " (the token is in dashboard.token in the Loom home)\n",
            )
        response = await handler(request)
        if "token" in request.query and not response.prepared:
            response.set_cookie(COOKIE, self._token, httponly=True, samesite="Strict")
        return response

    async def _index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def _state(self, request: web.Request) -> web.Response:
        return web.Response(body=self._json, content_type="application/json")

    async def _health(self, request: web.Request) -> web.Response:
        status = 200 if self.view.connected else 503
        return web.json_response({"connected": self.view.connected}, status=status)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1)
        self._listeners.add(queue)
        try:
            data: bytes | None = self._event
            while data is not None:
                await response.write(data)
                data = await queue.get()
        except ConnectionResetError:  # the page went away
            pass
        finally:
            self._listeners.discard(queue)
        return response


def _sse(data: bytes) -> bytes:
    """One Server-Sent Event of type ``state`` carrying ``data`` (JSON: one line)."""
    return b"event: state\ndata: " + data + b"\n\n"


def _offer(queue: asyncio.Queue[bytes | None], item: bytes | None) -> None:
    """Put ``item`` in a one-slot queue, replacing what the reader has not taken yet."""
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(item)
