"""An actor's link to one broker: HELLO on the control socket, then the pub/sub pair."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zmq

from loom.errors import ProtocolError
from loom.protocol import MAX_SUBSCRIPTION_FRAME, HelloAnswer, max_frame, queue_messages
from loom.session import KeySpec, Session, announced_endpoint, secure_client

__all__ = ["Link"]

QUEUE_BYTES = 256 << 20
"""About the most a subscriber socket's queue holds in libzmq (its mark is lowered for a
broker that allows large payloads), as the broker's default ``queue_bytes``."""


class Link:
    """The sockets an actor holds to a broker: its session (control: HELLO, heartbeats,
    tool calls), a publisher, and two subscribers (pattern events; the inbox for replies,
    which must flow even when events are paused).

    ``pub`` is an XPUB with ``XPUB_NODROP``: when the broker cannot keep up, sends raise
    ``zmq.Again`` and the actor waits (backpressure) instead of dropping silently the way
    a plain PUB would.

    Args:
        address: the broker's control endpoint.
        context: the zmq context sockets are made in.
        name: the actor's name, sent in HELLO.
        log: the actor's logger.
        hello: the actor's HELLO fields now (its patterns, for the directory).
        hwm: high-water mark of the pub/sub sockets, messages.
    """

    def __init__(
        self,
        address: str,
        context: zmq.Context[Any],
        *,
        name: str,
        log: Any,
        hello: Callable[[], dict[str, Any]],
        role: str = "actor",
        hwm: int = 1000,
        key: KeySpec = None,
    ) -> None:
        self.address = address
        self._context = context
        self._hwm = hwm
        self.session = Session(
            address, context, name=name, role=role, log=log, hello=hello, key=key
        )
        self.hello: HelloAnswer | None = None
        self.pub: zmq.Socket[bytes] | None = None
        self.sub: zmq.Socket[bytes] | None = None
        self.inbox: zmq.Socket[bytes] | None = None
        self._pub_at = ""
        self._sub_at = ""

    async def open(self, timeout: float) -> HelloAnswer:
        """Say HELLO, then connect the publisher and the two subscribers (events, inbox) to
        the endpoints it announces.

        Raises:
            BrokerUnavailableError: no answer within ``timeout`` seconds.
            VersionMismatchError: the broker speaks another protocol version.
            ProtocolError: the broker answered something unreadable.
        """
        self.hello = await self.session.open(timeout)
        # Sync sockets (drained with NOBLOCK on the event loop), whatever context we got.
        context: zmq.Context[Any] = zmq.Context.shadow(self._context.underlying)
        sockets = [context.socket(kind) for kind in (zmq.XPUB, zmq.SUB, zmq.SUB)]
        pub, sub, inbox = sockets
        try:
            pub.setsockopt(zmq.XPUB_NODROP, 1)
            for sock in sockets:
                sock.setsockopt(zmq.LINGER, 1000)
                sock.setsockopt(zmq.SNDHWM, self._hwm)
                sock.setsockopt(zmq.RCVHWM, self._hwm)
            # libzmq refuses frames over these before Python sees them: the publisher
            # receives only subscriptions, the subscribers messages of the broker's limit
            pub.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_FRAME)
            for sock in sockets:  # the session's keys: the broker knows one identity
                secure_client(sock, self.session.key)
            frame = max_frame(self.hello.max_payload)
            for sock in (sub, inbox):  # at most ~QUEUE_BYTES held, however large the events
                sock.setsockopt(zmq.MAXMSGSIZE, frame)
                sock.setsockopt(zmq.RCVHWM, queue_messages(self._hwm, QUEUE_BYTES, frame))
            self._pub_at = announced_endpoint(self.hello.pub, self.address)
            self._sub_at = announced_endpoint(self.hello.sub, self.address)
            pub.connect(self._pub_at)
            sub.connect(self._sub_at)
            inbox.connect(self._sub_at)
        except (zmq.ZMQError, TypeError, ValueError) as exc:
            for sock in sockets:
                sock.close(linger=0)
            self.session.close()
            raise ProtocolError("hello", f"broker announced unusable endpoints: {exc}") from exc
        self.pub, self.sub, self.inbox = pub, sub, inbox
        return self.hello

    def follow(self) -> bool:
        """After the session said HELLO again: connect to the pub/sub endpoints the broker
        announces now, if they moved (a broker restarted on new TCP ports). SUB sockets
        send their subscriptions again on the new connection. True if anything moved.

        Raises:
            ProtocolError: the announced endpoints are unusable.
        """
        hello = self.session.hello
        try:
            if hello is None:
                raise ValueError("no HELLO answer yet")
            pub_at = announced_endpoint(hello.pub, self.address)
            sub_at = announced_endpoint(hello.sub, self.address)
            moved = False
            if self.pub is not None and pub_at != self._pub_at:
                self.pub.disconnect(self._pub_at)
                self.pub.connect(pub_at)
                self._pub_at, moved = pub_at, True
            if self.sub is not None and self.inbox is not None:
                for sock in (self.sub, self.inbox):  # a restarted broker may allow more
                    sock.setsockopt(zmq.MAXMSGSIZE, max_frame(hello.max_payload))
                if sub_at != self._sub_at:
                    for sock in (self.sub, self.inbox):
                        sock.disconnect(self._sub_at)
                        sock.connect(sub_at)
                    self._sub_at, moved = sub_at, True
        except (zmq.ZMQError, KeyError, TypeError, ValueError) as exc:
            raise ProtocolError("hello", f"broker announced unusable endpoints: {exc}") from exc
        self.hello = hello
        return moved

    def close(self, linger: float = 1.0) -> None:
        """Say BYE and close the sockets; unsent messages get up to ``linger`` seconds at
        context term."""
        self.session.close()
        for sock in (self.pub, self.sub, self.inbox):
            if sock is not None:
                sock.close(linger=int(linger * 1000))
        self.pub = self.sub = self.inbox = None
