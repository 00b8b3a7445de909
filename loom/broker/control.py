"""The control plane: one ROUTER socket at the address users configure.

It answers HELLO (version check, announces the pub/sub endpoints and limits) and STATS
(counters). Later planes (tools, directory) add commands here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, ClassVar

import zmq

from loom.errors import ProtocolError
from loom.logs import DropCounter
from loom.protocol import ERROR_COMMAND, HELLO, STATS, VERSION, decode_control, encode_control

__all__ = ["ControlPlane", "Peer"]

_NOBLOCK = int(zmq.NOBLOCK)
MAX_PEERS = 10_000


class Peer:
    """A client that said HELLO."""

    __slots__ = ("name", "pid", "role", "since")

    def __init__(self, name: str, role: str, pid: int | None, since: float) -> None:
        self.name = name
        self.role = role
        self.pid = pid
        self.since = since

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "pid": self.pid, "since": self.since}


class ControlPlane:
    """Serves control commands on a bound ROUTER socket.

    Args:
        router: the bound ROUTER socket.
        announce: what HELLO tells clients (endpoints, limits); ``version`` is added.
        stats: returns the broker's counters for STATS.
        log: a structlog logger.
    """

    def __init__(
        self,
        router: zmq.Socket[bytes],
        *,
        announce: dict[str, Any],
        stats: Callable[[], dict[str, Any]],
        log: Any,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._router = router
        self._announce = {"version": VERSION, **announce}
        self._stats = stats
        self._log = log
        self._clock = clock
        self.peers: dict[bytes, Peer] = {}
        self.drops = DropCounter(log)

    def serve(self, budget: int = 100) -> None:
        """Answer up to ``budget`` waiting control messages."""
        for _ in range(budget):
            try:
                frames = self._router.recv_multipart(_NOBLOCK)
            except zmq.Again:
                return
            identity, rest = frames[0], frames[1:]
            try:
                command, body = decode_control(rest)
            except ProtocolError as exc:
                self.drops.drop(exc.reason, str(exc), plane="control")
                self._reply(identity, ERROR_COMMAND, {"code": "MALFORMED", "message": str(exc)})
                continue
            handler = self._commands.get(command)
            if handler is None:
                message = f"unknown command {command[:32]!r}"
                self.drops.drop("command", message, plane="control")
                error = {"code": "UNKNOWN_COMMAND", "message": message, "rid": body.get("rid")}
                self._reply(identity, ERROR_COMMAND, error)
                continue
            handler(self, identity, body)

    def _hello(self, identity: bytes, body: dict[str, Any]) -> None:
        version = body.get("version")
        if version != VERSION:
            message = f"protocol version {version!r} is not supported (broker: {VERSION})"
            self.drops.drop("version", message, plane="control", peer=str(body.get("name")))
            error = {"code": "VERSION_MISMATCH", "message": message, "version": VERSION}
            self._reply(identity, ERROR_COMMAND, {**error, "rid": body.get("rid")})
            return
        name = str(body.get("name", "?"))
        role = str(body.get("role", "client"))
        pid = body.get("pid")
        if len(self.peers) >= MAX_PEERS:  # no liveness yet (issue 4): forget the oldest
            del self.peers[next(iter(self.peers))]
        self.peers[identity] = Peer(
            name, role, pid if isinstance(pid, int) else None, self._clock()
        )
        self._log.debug("hello", peer=name, role=role, pid=pid)
        self._reply(identity, HELLO, {**self._announce, "rid": body.get("rid")})

    def _stats_command(self, identity: bytes, body: dict[str, Any]) -> None:
        snap = self._stats()
        snap["control_drops"] = dict(self.drops.counts)
        snap["peers"] = [p.as_dict() for p in self.peers.values()]
        snap["rid"] = body.get("rid")
        snap["pid"] = os.getpid()
        self._reply(identity, STATS, snap)

    def _reply(self, identity: bytes, command: bytes, body: dict[str, Any]) -> None:
        # A ROUTER drops silently what it cannot route or queue (peer gone, queue full).
        self._router.send_multipart([identity, *encode_control(command, body)], _NOBLOCK)

    _commands: ClassVar[dict[bytes, Callable[[ControlPlane, bytes, dict[str, Any]], None]]] = {
        HELLO: _hello,
        STATS: _stats_command,
    }
