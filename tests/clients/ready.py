"""Waiting, with a deadline, until a raw socket to a broker can send (pyzmq only, no loom
import: the raw clients use it too), instead of sleeping."""

from __future__ import annotations

from typing import Any

import zmq

SUBSCRIBE_ALL = b"\x01"
"""What the broker sends every publisher on connecting (``docs/protocol.md``)."""


def publisher(ctx: zmq.Context[Any], address: str, timeout: float = 10.0) -> zmq.Socket[bytes]:
    """An XPUB connected to the broker's publish endpoint, returned once the broker's
    subscribe-all has arrived: a publisher drops what it sends before that."""
    sock: zmq.Socket[bytes] = ctx.socket(zmq.XPUB)
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
