"""A peer's control channel to the broker: one DEALER socket at the control endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

import msgspec
import zmq
import zmq.backend

from loom.errors import (
    AuthenticationError,
    BrokerUnavailableError,
    ClosedError,
    DuplicateNameError,
    LoomError,
    ProtocolError,
    VersionMismatchError,
    refusal,
)
from loom.logs import DropCounter
from loom.protocol import (
    BYE,
    ERROR_COMMAND,
    HEARTBEAT,
    HELLO,
    MAX_ANSWER_BYTES,
    RESET,
    TOOL_COMMANDS,
    VERSION,
    ErrorAnswer,
    HelloAnswer,
    decode_control,
    encode_control,
    monitor_events,
    recv_frames,
    send_frames,
)
from loom.session._endpoints import check_endpoint
from loom.session._security import KeySpec, handshake_failure, peer_key, secure_client

__all__ = ["Session"]

B = TypeVar("B")
ToolHandler = Callable[[bytes, bytes], None]
"""Called with a tool message's ``meta`` and ``body`` frames."""

_BATCH = 1000
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_raw_get: Any = zmq.backend.Socket.get
"""``get`` of pyzmq's backend class: ~0.3 us less than ``getsockopt``."""
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


class Session:
    """One DEALER to the broker's control endpoint, read on the event loop.

    It says HELLO (version check; learns the endpoints and the heartbeat interval), then
    heartbeats every interval; the broker answers each one. When the broker has been silent
    for ``liveness`` intervals, the ``lost_hooks`` run. When it speaks again (it came
    back, or says RESET because it does not know us), the session says HELLO again and
    runs the ``restored_hooks``, where owners re-announce themselves (a worker its tools,
    an actor follows the pub/sub endpoints a restarted broker announces).

    Tool messages (``CALL``, ``RESULT``...) go to ``handlers`` by command; control answers
    resolve ``ask`` by their ``rid``.

    Args:
        address: the broker's control endpoint.
        context: the zmq context the socket is made in.
        name: the peer's name in HELLO and the directory.
        role: ``actor``, ``worker`` or ``client``.
        log: a structlog logger.
        hello: extra HELLO fields, computed at each HELLO (an actor's patterns).
        key: the CURVE keys to present (``loom.session.peer_key``'s ``key``: a key
            file, ``"none"``, or ``None`` for ``$LOOM_KEY`` else the Loom home's).

    Raises:
        EndpointError: ``address`` is not of an accepted form (``tcp://HOST:PORT``...).
        KeyFileError: the keys cannot be read.
    """

    def __init__(
        self,
        address: str,
        context: zmq.Context[Any],
        *,
        name: str,
        role: str,
        log: Any,
        hello: Callable[[], dict[str, Any]] | None = None,
        key: KeySpec = None,
    ) -> None:
        self.address = check_endpoint(address)
        self.key = peer_key(key)
        """The CURVE keys every socket to this broker presents (``None``: no CURVE)."""
        self.refused: AuthenticationError | None = None
        """Why the broker refused the last handshake, if it did."""
        self.name = name
        self.incarnation = os.urandom(8).hex()
        """This run of the peer, the same across reconnections (``$sys`` events carry it)."""
        self.role = role
        self.hello: HelloAnswer | None = None
        """The broker's last HELLO answer (endpoints, limits, heartbeat), checked."""
        self.handlers: dict[bytes, ToolHandler] = {}
        self.streams: dict[bytes, Callable[[list[bytes]], None]] = {}
        """Handlers of durable-topic messages (PUBACK, DELIVER), given the frames after
        the command."""
        self.lost_hooks: list[Callable[[], None]] = []
        self.restored_hooks: list[Callable[[], Awaitable[None]]] = []
        self.lost = False
        self.stats: Callable[[], dict[str, Any]] | None = None
        """Counters sent with each heartbeat, for the broker's metrics (``None``: none)."""
        self.drops = DropCounter(log)
        self._context = context
        self._log = log
        self._hello_extra = hello
        self._sock: zmq.Socket[bytes] | None = None
        self._monitor: zmq.Socket[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._asks: dict[int, asyncio.Future[tuple[bytes, dict[str, Any]]]] = {}
        self._rid = 0
        self._heard = 0.0
        self._beat: asyncio.Task[None] | None = None
        self._rejoin: asyncio.Task[None] | None = None
        self._reading = False
        """A read is scheduled: no need to schedule another."""

    @property
    def interval(self) -> float:
        """Seconds between heartbeats, as the broker announced."""
        return self.hello.heartbeat if self.hello is not None else 1.0

    @property
    def liveness(self) -> int:
        """Missed intervals after which a silent peer counts as dead."""
        return self.hello.liveness if self.hello is not None else 3

    def connect(self) -> None:
        """Connect the socket and start reading it, without a HELLO (a one-shot question
        needs none: ``loom.session.ask``)."""
        self._loop = asyncio.get_running_loop()
        context: zmq.Context[Any] = zmq.Context.shadow(self._context.underlying)
        sock = self._sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_ANSWER_BYTES)  # libzmq refuses bigger frames
        secure_client(sock, self.key)
        monitor = self._monitor = sock.get_monitor_socket(_HANDSHAKE_FAILED)
        sock.connect(self.address)
        self._loop.add_reader(sock.FD, self._on_readable)
        self._loop.call_soon(self._on_readable)  # the fd is edge-triggered
        self._loop.add_reader(monitor.FD, self._on_handshake_failed)
        self._loop.call_soon(self._on_handshake_failed)

    def _on_handshake_failed(self) -> None:
        """A handshake failed: say why to whoever waits for an answer (at once, not at
        their timeout), and once in the log."""
        if self._monitor is None:
            return
        for event, value, _ in monitor_events(self._monitor):
            error = handshake_failure(event, value, self.address, self.key)
            if error is None:
                continue
            if self.refused is None or str(self.refused) != str(error):
                self._log.warning("broker refused the handshake", error=str(error))
            self.refused = error
            for fut in self._asks.values():
                if not fut.done():
                    fut.set_exception(error)

    async def open(self, timeout: float) -> HelloAnswer:
        """Connect, say HELLO, start heartbeating; returns the broker's HELLO answer.

        Raises:
            BrokerUnavailableError: no answer within ``timeout`` seconds.
            VersionMismatchError: the broker speaks another protocol version.
            RefusedError: the broker refused the HELLO (``TooManyPeersError``...).
            ProtocolError: the broker answered something unreadable.
        """
        self.connect()
        try:
            await self._say_hello(timeout)
        except BaseException:
            self.close(bye=False)
            raise
        assert self._loop is not None
        self._beat = self._loop.create_task(self._heartbeat(), name=f"loom-heartbeat-{self.name}")
        assert self.hello is not None
        return self.hello

    async def _say_hello(self, timeout: float) -> None:
        """HELLO; an actor whose name another live incarnation holds asks again until
        ``timeout`` (a restarted actor's old run is forgotten within the broker's
        liveness)."""
        body = {
            "version": VERSION,
            "name": self.name,
            "role": self.role,
            "pid": os.getpid(),
            "incarnation": self.incarnation,
        }
        if self._hello_extra is not None:
            body.update(self._hello_extra())
        assert self._loop is not None
        deadline = self._loop.time() + timeout
        try:
            while True:
                left = max(deadline - self._loop.time(), 0.01)
                try:
                    self.hello = await self.request(HELLO, body, HelloAnswer, timeout=left)
                    return
                except DuplicateNameError:
                    if self._loop.time() + 0.1 >= deadline:
                        raise
                    await asyncio.sleep(0.1)
        except BrokerUnavailableError:
            raise BrokerUnavailableError(
                f"no broker answered at {self.address} within {timeout:g}s: is one running"
                " there? (start one with `loom-broker`, or name another with --broker or"
                " $LOOM_BROKER)"
            ) from None

    @overload
    async def request(
        self, command: bytes, body: dict[str, Any], answer: type[B], *, timeout: float
    ) -> B: ...

    @overload
    async def request(
        self, command: bytes, body: dict[str, Any], answer: None = None, *, timeout: float
    ) -> dict[str, Any]: ...

    async def request(
        self,
        command: bytes,
        body: dict[str, Any],
        answer: type[B] | None = None,
        *,
        timeout: float,
    ) -> B | dict[str, Any]:
        """Send a control command; return the broker's answer, checked as ``answer``
        (a msgspec Struct of ``loom.protocol._bodies``), or as a plain map when ``None``.

        Raises:
            BrokerUnavailableError: no answer within ``timeout`` seconds.
            RefusedError: the broker answered ``ERROR``: the subclass for its code
                (``ApprovalError``, ``DurableError``, ``MalformedRequestError``...).
            VersionMismatchError: the broker speaks another protocol version.
            ProtocolError: the answer is another command, or not of that type.
        """
        replied, reply = await self._ask(command, body, timeout)
        if replied == ERROR_COMMAND:
            try:
                error = msgspec.convert(reply, ErrorAnswer)
            except msgspec.ValidationError as exc:
                raise ProtocolError("answer", f"unreadable ERROR answer: {exc}") from None
            if error.code == "VERSION_MISMATCH":
                raise VersionMismatchError(VERSION, error.version)
            raise refusal(error.code, error.message or f"the broker refused {command!r}")
        if replied != command:
            message = f"{replied[:32]!r} answered {command.decode()}"
            raise ProtocolError("answer", message)
        if answer is None:
            return reply
        try:
            return msgspec.convert(reply, answer)
        except msgspec.ValidationError as exc:
            message = f"unreadable answer to {command.decode()}: {exc}"
            raise ProtocolError("answer", message) from None

    async def _ask(
        self, command: bytes, body: dict[str, Any], timeout: float
    ) -> tuple[bytes, dict[str, Any]]:
        """Send a control command and wait for the answer carrying its ``rid``: the
        answer's command (``ERROR`` when the broker refused) and body.

        Raises:
            BrokerUnavailableError: no answer within ``timeout`` seconds.
            ClosedError: the session is not open.
        """
        if self._loop is None or self._sock is None:
            raise ClosedError(f"the session to {self.address} is not open")
        self._rid += 1
        rid = self._rid
        fut: asyncio.Future[tuple[bytes, dict[str, Any]]] = self._loop.create_future()
        self._asks[rid] = fut
        try:
            self.send(encode_control(command, {**body, "rid": rid}))
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            raise BrokerUnavailableError(
                f"no broker answered {command.decode()} at {self.address} within {timeout:g}s"
            ) from None
        finally:
            self._asks.pop(rid, None)

    @property
    def closed(self) -> bool:
        return self._sock is None

    def send(self, frames: list[bytes]) -> bool:
        """Queue one message for the broker; False when the socket cannot take it now."""
        sock = self._sock
        if sock is None:
            return False
        try:
            send_frames(sock, frames)
        except zmq.Again:
            return False
        finally:
            # A send may consume the fd's edge for a message that arrived meanwhile: the
            # reader would never wake for it. Look, as pyzmq's asyncio sockets do.
            if not self._reading and _raw_get(sock, _EVENTS) & _POLLIN:
                self._reading = True
                assert self._loop is not None
                self._loop.call_soon(self._on_readable)
        return True

    async def send_waiting(
        self, frames: list[bytes], *, abandon: Callable[[], bool] | None = None
    ) -> bool:
        """Send, waiting (with a growing backoff) while the socket cannot take it.

        Returns:
            True once queued; False if ``abandon()`` became true first.

        Raises:
            ClosedError: the session closed meanwhile.
        """
        delay = 0.0005
        while not self.send(frames):
            if abandon is not None and abandon():
                return False
            if self._sock is None:
                raise ClosedError(f"the session to {self.address} is closed")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        return True

    def tell(self, command: bytes, body: dict[str, Any] | None = None) -> bool:
        """Send a control command that expects no answer."""
        return self.send(encode_control(command, body or {}))

    def close(self, *, bye: bool = True) -> None:
        """Stop heartbeating, say BYE (the broker forgets us at once), close the socket."""
        for task in (self._beat, self._rejoin):
            if task is not None:
                task.cancel()
        self._beat = self._rejoin = None
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if bye:
            with contextlib.suppress(zmq.ZMQError):
                send_frames(sock, encode_control(BYE, {}))
        if self._loop is not None:
            self._loop.remove_reader(sock.FD)
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            if self._loop is not None:
                self._loop.remove_reader(monitor.FD)
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
            monitor.close(linger=0)
        sock.close()
        for fut in self._asks.values():
            if not fut.done():
                fut.cancel()

    async def _heartbeat(self) -> None:
        assert self._loop is not None
        loop = self._loop
        while True:
            await asyncio.sleep(self.interval)
            self.tell(HEARTBEAT, self._heartbeat_body())
            silent = loop.time() - self._heard
            if not self.lost and silent > self.interval * self.liveness:
                self.lost = True
                self._log.warning("broker lost", broker=self.address, silent_s=round(silent, 2))
                self._run_lost_hooks()

    def _heartbeat_body(self) -> dict[str, Any]:
        """``{"stats": ...}`` when a stats source is set and works; a failing one is
        logged and left out (the heartbeat itself must go on)."""
        if self.stats is None:
            return {}
        try:
            return {"stats": self.stats()}
        except Exception as exc:
            self._log.warning("stats for the heartbeat failed", error=repr(exc))
            return {}

    def _on_readable(self) -> None:
        self._reading = False
        sock = self._sock
        if sock is None:
            return
        assert self._loop is not None
        for _ in range(_BATCH):
            try:
                frames = recv_frames(sock)
            except zmq.Again:
                return
            self._heard = self._loop.time()
            try:
                self._dispatch(frames)
            except ProtocolError as exc:
                self.drops.drop(exc.reason, str(exc), plane="control")
            except Exception as exc:  # a handler's bug must not stop the reading
                self.drops.drop("handler", f"{type(exc).__name__}: {exc}", plane="control")
        self._reading = True
        self._loop.call_soon(self._on_readable)

    def _dispatch(self, frames: list[bytes]) -> None:
        command = frames[0]
        if self.lost or command == RESET:
            self._restore(command == RESET)
        stream = self.streams.get(command)
        if stream is not None:
            stream(frames[1:])
            return
        if command in TOOL_COMMANDS:
            handler = self.handlers.get(command)
            if len(frames) != 3 or handler is None:
                raise ProtocolError("frames", f"unexpected {command[:16]!r} ({len(frames)} frames)")
            handler(frames[1], frames[2])
            return
        command, body = decode_control(frames)
        rid = body.get("rid")
        fut = self._asks.get(rid) if isinstance(rid, int) else None
        if fut is not None and not fut.done():
            fut.set_result((command, body))

    def _run_lost_hooks(self) -> None:
        for hook in self.lost_hooks:
            try:
                hook()
            except Exception:  # one owner's bug must not keep the others uninformed
                self._log.exception("lost hook failed")

    def _restore(self, reset: bool) -> None:
        """The broker speaks again: say HELLO again (it may not know us), then re-announce.

        Calls in flight are failed first (the lost hooks): a broker that was silent this
        long or forgot us has cancelled or lost them."""
        was_lost, self.lost = self.lost, False
        if was_lost:
            self._log.info("broker back", broker=self.address, reset=reset)
        else:  # RESET without a silence: it forgot us all the same
            self._run_lost_hooks()
        if self._rejoin is None or self._rejoin.done():
            assert self._loop is not None
            self._rejoin = self._loop.create_task(self._hello_again())

    async def _hello_again(self) -> None:
        """HELLO, then the restored hooks; on failure, again every interval while open."""
        while self._sock is not None:
            try:
                await self._say_hello(timeout=max(self.interval * self.liveness, 1.0))
                for hook in self.restored_hooks:
                    await hook()
                return
            except LoomError as exc:
                self._log.warning("cannot rejoin the broker yet", error=str(exc))
            await asyncio.sleep(self.interval)
