"""The broker: binds the control ROUTER and the pub/sub pair, builds its planes from one
validated settings object, then runs one poll loop."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from loom.broker._control import ControlPlane
from loom.broker._durable import DurablePlane
from loom.broker._federation import FederationPlane
from loom.broker._peers import Peers
from loom.broker._pubsub import PubSubProxy
from loom.broker._security import Guard
from loom.broker._settings import BrokerSettings, SecuritySettings
from loom.broker._store import DurableLog
from loom.broker._tools import ToolRouter
from loom.broker._traces import TraceBuffer
from loom.config import FederationSettings
from loom.errors import EndpointError
from loom.keys import dashboard_token
from loom.logs import DropCounter, get_logger
from loom.protocol import MAX_SUBSCRIPTION_FRAME, max_frame, queue_messages

__all__ = ["Broker", "derive_endpoints", "private_ipc"]


def derive_endpoints(control: str) -> tuple[str, str]:
    """Where to bind the publish (XSUB) and subscribe (XPUB) sockets for ``control``.

    TCP takes ephemeral ports on the same host (HELLO announces them); IPC and inproc
    take sibling names (``<path>.pub``, ``<path>.sub``).

    Raises:
        EndpointError: an unsupported transport.
    """
    scheme, sep, rest = control.partition("://")
    if not sep:
        raise EndpointError(f"endpoint {control!r} has no transport (tcp://, ipc://, inproc://)")
    if scheme == "tcp":
        host = rest.rsplit(":", 1)[0]
        return f"tcp://{host}:*", f"tcp://{host}:*"
    if scheme in ("ipc", "inproc"):
        return f"{control}.pub", f"{control}.sub"
    raise EndpointError(f"endpoint {control!r}: transport {scheme!r} is not supported")


def private_ipc(endpoint: str) -> None:
    """An ``ipc://`` endpoint's socket files must sit in a directory only this user can
    enter: it is made (mode 0700) when missing, and refused when another user owns it
    or others may enter it (they could connect, or squat on the name).

    Raises:
        EndpointError: the directory is not private, or cannot be made.
    """
    scheme, _, path = endpoint.partition("://")
    if scheme != "ipc" or path.startswith("@"):  # abstract names have no directory
        return
    directory = Path(path).absolute().parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        status = directory.stat()
    except OSError as exc:
        raise EndpointError(f"{endpoint}: cannot make its directory {directory}: {exc}") from exc
    if status.st_uid != os.getuid() or status.st_mode & 0o077:
        whose = "another user's" if status.st_uid != os.getuid() else "open to other users"
        raise EndpointError(
            f"{endpoint}: {directory} is {whose} (mode {status.st_mode & 0o777:o}): an ipc"
            " socket goes in a directory only you can enter, e.g."
            f" ipc://{directory / f'loom-{os.getuid()}' / Path(path).name} (made 0700"
            " for you) or a directory of yours after chmod 700"
        )


class Broker:
    """A Loom broker, built from one validated :class:`BrokerSettings`.

    ``bind()`` binds every socket and builds the planes, each complete; ``run()`` blocks
    the calling thread (a process's main thread, or a thread of its own) until ``stop()``
    is called, from any thread or a signal handler.

    Args:
        settings: what the broker binds and how it forwards (the defaults: a broker on
            ``tcp://127.0.0.1:7700``).
        security: who may connect and what each identity may do (the default: CURVE
            with the Loom home's keys, only its own user, with every right).
        context: the zmq context; a private one by default.
        home: the Loom home (default: ``$LOOM_HOME``, else the XDG data directory).
        federation: which events cross the federation link, when one attaches (the
            default: every topic both ways).
    """

    def __init__(
        self,
        settings: BrokerSettings | None = None,
        *,
        security: SecuritySettings | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        home: Path | None = None,
        federation: FederationSettings | None = None,
    ) -> None:
        self.settings = settings if settings is not None else BrokerSettings()
        self.federation_settings = federation if federation is not None else FederationSettings()
        self.security = security if security is not None else SecuritySettings()
        self.home = home
        self.guard: Guard | None = None
        self._reload = threading.Event()
        self.endpoint = self.settings.endpoint
        self.name = self.settings.name
        self._own_context = context is None
        self._context = context if context is not None else zmq.Context()
        self._stopping = threading.Event()
        self._log = get_logger("loom.broker", broker=self.name)
        self.endpoints: dict[str, str] = {}
        self._sockets: list[zmq.Socket[bytes]] = []
        self.proxy: PubSubProxy | None = None
        self.control: ControlPlane | None = None
        self._servers: list[Any] = []
        """The HTTP servers beside the broker (metrics, dashboard), stopped with it."""
        self.internal_errors = 0
        self._errors = DropCounter(self._log)
        self._monitors: list[zmq.Socket[bytes]] = []

    def bind(self) -> dict[str, str]:
        """Bind every socket and build the planes; returns the endpoints (``control``,
        ``pub``, ``sub``, and ``metrics``/``dashboard`` when served).

        Raises:
            zmq.ZMQError: an address is in use or invalid.
            EndpointError: an unsupported transport.
            OSError: the metrics or dashboard port cannot be bound.
            KeyFileError: the broker's keys cannot be read or made.
            ConfigError: the ACL file is invalid.
        """
        settings = self.settings
        pub_at, sub_at = derive_endpoints(settings.endpoint)
        private_ipc(settings.endpoint)  # the pub/sub sockets go beside it
        guard = self.guard = Guard(self.security, self.name, self._log, self.home)
        guard.start(self._context)  # before any bind: no connection goes unauthenticated
        try:
            self._build(guard, pub_at, sub_at)
            self._serve_http()
        except BaseException:
            self._unbind()
            raise
        return self.endpoints

    def _build(self, guard: Guard, pub_at: str, sub_at: str) -> None:
        """Bind the three sockets and build the planes on them."""
        settings = self.settings
        store = None
        if settings.data_dir is not None:  # before binding: peers get answers at once
            store = DurableLog(
                settings.data_dir,
                map_size=settings.durable_map_size,
                max_age=settings.durable_max_age,
                max_bytes=settings.durable_max_bytes,
            )
        # Every inbound frame is bounded by libzmq before Python sees it, and every queue
        # holds about queue_bytes per connection however large its messages are.
        frame = max_frame(settings.max_payload)
        messages = queue_messages(settings.hwm, settings.queue_bytes, frame)
        router = self._socket(zmq.ROUTER, frame, messages)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unroutable answers are counted, not lost
        router.bind(settings.endpoint)
        xsub = self._socket(zmq.XSUB, frame, messages)
        xsub.bind(pub_at)
        xpub = self._socket(zmq.XPUB, MAX_SUBSCRIPTION_FRAME, messages)
        if not guard.insecure:  # each subscription is granted by the broker, or not
            xpub.setsockopt(zmq.XPUB_MANUAL, 1)
        xpub.bind(sub_at)
        self.endpoints = {
            "control": settings.endpoint,
            "pub": xsub.getsockopt_string(zmq.LAST_ENDPOINT),
            "sub": xpub.getsockopt_string(zmq.LAST_ENDPOINT),
        }
        log = self._log
        traces = TraceBuffer()
        peers = Peers(router, DropCounter(log))
        checked = None if guard.insecure else guard
        federation = FederationPlane(
            self.federation_settings,
            send=peers.send,
            offer=peers.offer,
            forward=self._deliver,
            subscriptions=self._subscriptions,
            publish=self._system_event,
            max_payload=settings.max_payload,
            log=log,
            guard=checked,
        )
        proxy = self.proxy = PubSubProxy(
            xsub, xpub, settings, traces=traces, log=log, guard=checked, federation=federation
        )
        tools = ToolRouter(
            settings,
            send=peers.send,
            name_of=peers.name_of,
            traces=traces,
            publish=self._system_event,
            log=log,
            guard=checked,
        )
        durable = DurablePlane(
            store,
            settings,
            send=peers.send,
            forward=proxy.forward,
            window=max(1, min(1000, messages // 2)),  # room left in the queue for answers
            logger=log,
        )
        announce = {
            "broker": self.name,
            "pub": _advertised(self.endpoints["pub"], settings.advertise),
            "sub": _advertised(self.endpoints["sub"], settings.advertise),
            "max_payload": settings.max_payload,
            "insecure": guard.insecure,
        }
        self.control = ControlPlane(
            peers,
            settings,
            tools=tools,
            durable=durable,
            groups=proxy.groups,
            announce=announce,
            stats=proxy.snapshot,
            publish=self._system_event,
            log=log,
            guard=checked,
            federation=federation,
        )
        self._router, self._xsub, self._xpub = router, xsub, xpub
        if not guard.insecure:  # handshakes that fail before the ZAP handler sees a key
            failed = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            self._monitors = [s.get_monitor_socket(failed) for s in (router, xsub, xpub)]
            self._sockets.extend(self._monitors)

    def _serve_http(self) -> None:
        """Start the metrics endpoint and the dashboard, when the settings ask for them
        (their libraries are imported only then)."""
        settings = self.settings
        assert self.proxy is not None and self.control is not None
        if settings.metrics_port:
            from loom.broker._metrics import serve_metrics

            host = settings.metrics_host
            server = serve_metrics(self.proxy, self.control, host, settings.metrics_port)
            self._servers.append(server)
            self.endpoints["metrics"] = f"http://{host}:{server.server_address[1]}/metrics"
        if settings.dashboard_port:
            from loom.dashboard import DashboardThread  # aiohttp only when asked

            insecure = self.guard is not None and self.guard.insecure
            dashboard = DashboardThread(
                self.endpoints["control"],
                settings.dashboard_host,
                settings.dashboard_port,
                log=self._log,
                token=dashboard_token(self.home),
                key="none" if insecure else None,
            )
            self._servers.append(dashboard)
            self.endpoints["dashboard"] = dashboard.start()

    def _unbind(self) -> None:
        """Give the bound addresses back (a later part of ``bind`` failed)."""
        self._stop_servers()
        for sock in self._sockets:
            sock.close(linger=0)
        self._sockets.clear()
        if self.guard is not None:
            self.guard.stop()

    def _stop_servers(self) -> None:
        for server in reversed(self._servers):
            if hasattr(server, "shutdown"):  # the metrics' WSGI server
                server.shutdown()
                server.server_close()
            else:
                server.stop()
        self._servers.clear()

    def _socket(self, kind: int, frame: int, hwm: int) -> zmq.Socket[bytes]:
        sock = self._context.socket(kind)
        assert self.guard is not None
        self.guard.secure(sock)
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
        for sock in (self._xsub, self._xpub, self._router, *self._monitors):
            poller.register(sock, zmq.POLLIN)
        xsub, xpub, router = self._xsub, self._xpub, self._router
        self._log.info("broker ready", **self.endpoints)
        try:
            while not self._stopping.is_set():
                timeout = 200
                if self._reload.is_set():
                    self._reload.clear()
                    self._reload_rights()
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
                        elif sock is router:
                            control.serve()
                        elif self.guard is not None:
                            self.guard.handshakes_failed(sock)
                    except Exception as exc:  # a bug must not take the mesh down
                        self._internal_error(exc)
        finally:
            self._close()

    def reload(self) -> None:
        """Ask the loop to read the ACL file again (SIGHUP). Safe from signal handlers."""
        self._reload.set()

    def _reload_rights(self) -> None:
        if self.guard is None or self.guard.insecure:
            self._log.info("nothing to reload: the broker runs --insecure")
            return
        try:
            if self.guard.reload() and self.control is not None:
                self.control.revoke()
        except Exception as exc:
            self._internal_error(exc)

    def _system_event(self, topic: str, data: dict[str, Any]) -> None:
        assert self.proxy is not None
        self.proxy.publish(topic, data, sender=self.name)

    def _deliver(self, topic: bytes, header: bytes, payload: bytes) -> None:
        assert self.proxy is not None
        self.proxy.deliver(topic, header, payload)

    def _subscriptions(self) -> set[bytes]:
        assert self.proxy is not None
        return self.proxy.subscriptions

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
        if self.guard is not None:
            self.guard.stop()
        if self._own_context:
            self._context.term()
        self._log.info("broker stopped", **totals)


def _advertised(endpoint: str, host: str | None) -> str:
    """A bound TCP endpoint as peers should dial it: at ``host`` when one is advertised."""
    if host is None or not endpoint.startswith("tcp://"):
        return endpoint
    return f"tcp://{host}:{endpoint.rpartition(':')[2]}"
