"""Raw sockets to a broker (pyzmq only, no loom import: the raw clients use it too): the
CURVE keys of the Loom home, and waiting with a deadline until a socket can send."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

SUBSCRIBE_ALL = b"\x01"
"""What the broker sends every publisher on connecting (``docs/protocol.md``)."""


def curve(sock: zmq.Socket[Any], key: str | Path = "local") -> zmq.Socket[Any]:
    """Make ``sock`` present a key of the Loom home (``$LOOM_HOME``; the tests' own) to
    its broker, as every Loom peer does: ``key`` is a name in the home's ``keys/`` (the
    local identity by default) or a ``.key_secret`` file. Returns the socket."""
    keys = Path(os.environ["LOOM_HOME"]) / "keys"
    path = Path(key) if isinstance(key, Path) else keys / f"{key}.key_secret"
    public, secret = zmq.auth.load_certificate(path)
    server, _ = zmq.auth.load_certificate(keys / "broker.key")
    sock.setsockopt(zmq.CURVE_SERVERKEY, server)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
    assert secret is not None
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
    return sock


def publisher(
    ctx: zmq.Context[Any], address: str, timeout: float = 10.0, key: str | Path = "local"
) -> zmq.Socket[bytes]:
    """An XPUB connected to the broker's publish endpoint, returned once the broker's
    subscribe-all has arrived: a publisher drops what it sends before that."""
    sock: zmq.Socket[bytes] = curve(ctx.socket(zmq.XPUB), key)
    sock.connect(address)
    if not sock.poll(int(timeout * 1000)) or sock.recv() != SUBSCRIBE_ALL:
        sock.close(0)
        raise TimeoutError(f"{address}: no subscribe-all from the broker within {timeout}s")
    return sock


def connect(sock: zmq.Socket[bytes], address: str, timeout: float = 10.0) -> None:
    """Connect ``sock`` and return once its handshake with the peer is done."""
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    try:
        sock.connect(address)
        if not monitor.poll(int(timeout * 1000)):
            raise TimeoutError(f"{address}: no handshake within {timeout}s")
    finally:
        sock.disable_monitor()
        monitor.close(0)
