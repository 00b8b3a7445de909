"""The broker: binds the control ROUTER and the pub/sub pair, then runs one poll loop."""

from __future__ import annotations

import threading
import time
from typing import Any

import zmq

from loom.broker.approvals import ApprovalDesk
from loom.broker.control import ControlPlane
from loom.broker.durable import DurableLog, DurablePlane
from loom.broker.pubsub import PubSubProxy
from loom.broker.tools import ToolRouter
from loom.broker.traces import TraceBuffer
from loom.logs import DropCounter, get_logger
from loom.protocol import (
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_MAX_TIMEOUT,
    MAX_SUBSCRIPTION_FRAME,
    max_frame,
    queue_messages,
)

__all__ = ["Broker", "derive_endpoints"]


def derive_endpoints(control: str) -> tuple[str, str]:
    """Where to bind the publish (XSUB) and subscribe (XPUB) sockets for ``control``.

    TCP takes ephemeral ports on the same host (HELLO announces them); IPC and inproc
    take sibling names (``<path>.pub``, ``<path>.sub``).

    Raises:
        ValueError: an unsupported transport.
    """
    scheme, sep, rest = control.partition("://")
    if not sep:
        raise ValueError(f"endpoint {control!r} has no transport (tcp://, ipc://, inproc://)")
    if scheme == "tcp":
        host = rest.rsplit(":", 1)[0]
        return f"tcp://{host}:*", f"tcp://{host}:*"
    if scheme in ("ipc", "inproc"):
        return f"{control}.pub", f"{control}.sub"
    raise ValueError(f"endpoint {control!r}: transport {scheme!r} is not supported")


class Broker:
    """A Loom broker.

    ``run()`` blocks the calling thread (a process's main thread, or a thread of its own)
    until ``stop()`` is called, from any thread or a signal handler.

    Args:
        endpoint: the control address users configure (``tcp://127.0.0.1:7700``,
            ``ipc:///tmp/loom.sock``).
        context: the zmq context; a private one by default.
        max_payload: largest payload forwarded, in bytes.
        stall_timeout: how long a full subscriber may hold up a send (seconds).
        hwm: high-water mark of every socket, in messages (for small messages).
        queue_bytes: about how many bytes one connection's queue holds, each way, when
            its messages are as large as ``max_payload`` (the mark is lowered to fit).
        name: the broker's name in logs and HELLO.
        heartbeat: seconds between heartbeats with every peer.
        liveness: missed heartbeats after which a peer counts as dead.
        call_timeout: a tool call's timeout when neither caller nor tool sets one.
        max_queue: tool calls waiting per tool before OVERLOADED.
        max_attempts: dispatches of an idempotent call whose workers keep dying.
        max_call_timeout: the longest timeout a tool call gets, whatever it asks.
        max_call_bytes: bytes of tool calls' arguments held at once (then OVERLOADED).
        data_dir: where the durable topics' LMDB log lives (``None``: no durable topics).
        durable_map_size: the log's largest size, bytes.
        durable_max_age: seconds durable events are kept (0: forever).
        durable_max_bytes: the log's size beyond which the oldest events go (0: no cap).
        approval_timeout: seconds a call to a tool that needs approval waits for a
            decision before it is DENIED.
        require_approval: tool name patterns (``fs.delete``, ``shell.*``) whose calls need
            approval whatever their workers announce.
        metrics_port: serve Prometheus metrics on this TCP port (``/metrics``; 0: off).
        metrics_host: the address the metrics endpoint binds.
        dashboard_port: serve the live dashboard on this TCP port (0: off); it runs in
            a thread of this process, as a client of this broker.
        dashboard_host: the address the dashboard binds.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        stall_timeout: float = 0.5,
        hwm: int = 1000,
        queue_bytes: int = 256 << 20,
        name: str = "loom-broker",
        heartbeat: float = 1.0,
        liveness: int = 3,
        call_timeout: float = 30.0,
        max_queue: int = 1000,
        max_attempts: int = 3,
        max_call_timeout: float = DEFAULT_MAX_TIMEOUT,
        max_call_bytes: int = 256 << 20,
        data_dir: str | None = None,
        durable_map_size: int = 1 << 30,
        durable_max_age: float = 0.0,
        durable_max_bytes: int = 0,
        approval_timeout: float = 120.0,
        require_approval: tuple[str, ...] = (),
        metrics_port: int = 0,
        metrics_host: str = "127.0.0.1",
        dashboard_port: int = 0,
        dashboard_host: str = "127.0.0.1",
    ) -> None:
        self.endpoint = endpoint
        self.name = name
        self._own_context = context is None
        self._context = context if context is not None else zmq.Context()
        self._max_payload = max_payload
        self._stall_timeout = stall_timeout
        self._hwm = hwm
        self._queue_bytes = queue_bytes
        self._heartbeat = heartbeat
        self._liveness = liveness
        self._call_timeout = call_timeout
        self._max_queue = max_queue
        self._max_attempts = max_attempts
        self._max_call_timeout = max_call_timeout
        self._max_call_bytes = max_call_bytes
        self._data_dir = data_dir
        self._approval_timeout = approval_timeout
        self._require_approval = tuple(require_approval)
        self._metrics_at = (metrics_host, metrics_port)
        self._metrics: Any = None
        self._dashboard_at = (dashboard_host, dashboard_port)
        self._dashboard: Any = None
        self._durable_options = (durable_map_size, durable_max_age, durable_max_bytes)
        self._stopping = threading.Event()
        self._log = get_logger("loom.broker", broker=name)
        self.endpoints: dict[str, str] = {}
        self._sockets: list[zmq.Socket[bytes]] = []
        self.proxy: PubSubProxy | None = None
        self.control: ControlPlane | None = None
        self.internal_errors = 0
        self._errors = DropCounter(self._log)

    def bind(self) -> dict[str, str]:
        """Bind every socket; returns the endpoints (``control``, ``pub``, ``sub``).

        Raises:
            zmq.ZMQError: an address is in use or invalid.
            ValueError: an unsupported transport.
        """
        pub_at, sub_at = derive_endpoints(self.endpoint)
        log = None
        if self._data_dir is not None:  # before binding: peers get answers at once
            map_size, max_age, max_bytes = self._durable_options
            log = DurableLog(
                self._data_dir, map_size=map_size, max_age=max_age, max_bytes=max_bytes
            )
        # Every inbound frame is bounded by libzmq before Python sees it, and every queue
        # holds about queue_bytes per connection however large its messages are.
        frame = max_frame(self._max_payload)
        messages = queue_messages(self._hwm, self._queue_bytes, frame)
        router = self._socket(zmq.ROUTER, frame, messages)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unroutable answers are counted, not lost
        router.bind(self.endpoint)
        xsub = self._socket(zmq.XSUB, frame, messages)
        xsub.bind(pub_at)
        xpub = self._socket(zmq.XPUB, MAX_SUBSCRIPTION_FRAME, messages)
        xpub.bind(sub_at)
        self.endpoints = {
            "control": self.endpoint,
            "pub": xsub.getsockopt_string(zmq.LAST_ENDPOINT),
            "sub": xpub.getsockopt_string(zmq.LAST_ENDPOINT),
        }
        traces = TraceBuffer()
        self.proxy = PubSubProxy(
            xsub,
            xpub,
            max_payload=self._max_payload,
            stall_timeout=self._stall_timeout,
            log=self._log,
            traces=traces,
        )

        def send(identity: bytes, frames: list[bytes]) -> bool:
            return control.send(identity, frames)

        tools = ToolRouter(
            send,
            log=self._log,
            default_timeout=self._call_timeout,
            max_queue=self._max_queue,
            max_attempts=self._max_attempts,
            max_payload=self._max_payload,
            max_timeout=self._max_call_timeout,
            max_call_bytes=self._max_call_bytes,
            require_approval=self._require_approval,
        )
        tools.traces = traces
        durable = DurablePlane(
            log,
            send=send,
            forward=self.proxy.forward,
            logger=self._log,
            max_payload=self._max_payload,
            window=max(1, min(1000, messages // 2)),  # room left in the queue for answers
            window_bytes=max(1, self._queue_bytes // 2),
        )
        control = self.control = ControlPlane(
            router,
            tools=tools,
            durable=durable,
            announce={
                "broker": self.name,
                "pub": self.endpoints["pub"],
                "sub": self.endpoints["sub"],
                "max_payload": self._max_payload,
            },
            stats=self.proxy.snapshot,
            log=self._log,
            events=self._system_event,
            heartbeat=self._heartbeat,
            liveness=self._liveness,
        )
        tools.name_of = control.name_of
        tools.approvals = ApprovalDesk(
            release=tools.release,
            refuse=tools.refuse,
            ping=tools.ping,
            publish=self._system_event,
            name_of=control.name_of,
            timeout=self._approval_timeout,
        )
        self._router, self._xsub, self._xpub = router, xsub, xpub
        host, port = self._metrics_at
        if port:
            from loom.broker.metrics import serve_metrics

            try:
                self._metrics = serve_metrics(self, host, port)
            except OSError:
                self._unbind()
                raise
            bound = self._metrics.server_address[1]
            self.endpoints["metrics"] = f"http://{host}:{bound}/metrics"
        host, port = self._dashboard_at
        if port:
            from loom.dashboard.thread import DashboardThread  # aiohttp only when asked

            dashboard = DashboardThread(self.endpoints["control"], host, port, log=self._log)
            try:
                self.endpoints["dashboard"] = dashboard.start()
            except OSError:
                dashboard.stop()
                self._unbind()
                raise
            self._dashboard = dashboard
        return self.endpoints

    def _unbind(self) -> None:
        """Give the bound addresses back (a later part of ``bind`` failed)."""
        self._stop_servers()
        for sock in self._sockets:
            sock.close(linger=0)
        self._sockets.clear()

    def _stop_servers(self) -> None:
        if self._dashboard is not None:
            self._dashboard.stop()
            self._dashboard = None
        if self._metrics is not None:
            self._metrics.shutdown()
            self._metrics.server_close()
            self._metrics = None

    def _socket(self, kind: int, frame: int, hwm: int) -> zmq.Socket[bytes]:
        sock = self._context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, frame)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
        self._sockets.append(sock)
        return sock

    def run(self) -> None:
        """Bind (if not done yet), log ``broker ready``, and serve until ``stop()``."""
        if self.proxy is None:
            self.bind()
        assert self.proxy is not None and self.control is not None
        proxy, control = self.proxy, self.control
        poller = zmq.Poller()
        for sock in (self._xsub, self._xpub, self._router):
            poller.register(sock, zmq.POLLIN)
        xsub, xpub = self._xsub, self._xpub
        self._log.info("broker ready", **self.endpoints)
        try:
            while not self._stopping.is_set():
                timeout = 200
                try:
                    wake = control.tick()  # dead peers, call deadlines, durable commits
                    timeout = min(200, max(0, int((wake - time.monotonic()) * 1000) + 1))
                except Exception as exc:
                    self._internal_error(exc)
                for sock, _ in poller.poll(timeout):
                    try:
                        if sock is xsub:
                            proxy.pump()
                        elif sock is xpub:
                            proxy.read_subscriptions()
                        else:
                            control.serve()
                    except Exception as exc:  # a bug must not take the mesh down
                        self._internal_error(exc)
        finally:
            self._close()

    def _system_event(self, topic: str, data: dict[str, Any]) -> None:
        assert self.proxy is not None
        self.proxy.publish(topic, data, sender=self.name)

    def _internal_error(self, exc: Exception) -> None:
        """A bug surfaced in the loop: count it, log it (rate-limited, with its
        traceback), go on serving."""
        self.internal_errors += 1
        self._errors.drop("internal", f"{type(exc).__name__}: {exc}", exc_info=exc)

    def stop(self) -> None:
        """Ask ``run()`` to return (within ~200 ms). Safe from threads and signal handlers."""
        self._stopping.set()

    def stats(self) -> dict[str, Any]:
        """The proxy's counters (valid after ``bind()``)."""
        return self.proxy.snapshot() if self.proxy is not None else {}

    def _close(self) -> None:
        totals = self.stats().get("totals", {})
        self._stop_servers()
        if self.control is not None:
            self.control.durable.close()
        for sock in self._sockets:
            sock.close(linger=0)
        self._sockets.clear()
        if self._own_context:
            self._context.term()
        self._log.info("broker stopped", **totals)
