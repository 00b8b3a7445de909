"""One question to a broker without joining the mesh (no HELLO, no heartbeats): what
``loom stats``, ``loom trace`` and ``loom replay`` ask, and waiting for a broker."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar, overload

import zmq

from loom.errors import BrokerUnavailableError
from loom.logs import get_logger
from loom.protocol import HELLO, VERSION, HelloAnswer
from loom.session._security import KeySpec
from loom.session._session import Session

__all__ = ["ask", "broker_answers", "wait_for_broker"]

B = TypeVar("B")


@overload
async def ask(
    address: str,
    command: bytes,
    body: dict[str, Any] | None,
    answer: type[B],
    *,
    timeout: float = 5.0,
    key: KeySpec = None,
) -> B: ...


@overload
async def ask(
    address: str,
    command: bytes,
    body: dict[str, Any] | None = None,
    answer: None = None,
    *,
    timeout: float = 5.0,
    key: KeySpec = None,
) -> dict[str, Any]: ...


async def ask(
    address: str,
    command: bytes,
    body: dict[str, Any] | None = None,
    answer: type[B] | None = None,
    *,
    timeout: float = 5.0,
    key: KeySpec = None,
) -> B | dict[str, Any]:
    """``Session.request`` on a session of its own, opened for this one question.

    Raises:
        BrokerUnavailableError: no answer within ``timeout`` seconds.
        AuthenticationError: the broker refused the handshake.
        RefusedError: the broker refused (the subclass for its code).
        ProtocolError: the answer is unreadable.
        KeyFileError: the keys (``key``: see ``peer_key``) cannot be read.
    """
    context: zmq.Context[Any] = zmq.Context()
    log = get_logger("loom.ask")
    try:
        session = Session(address, context, name="ask", role="client", log=log, key=key)
    except BaseException:
        context.destroy(linger=0)
        raise
    try:
        session.connect()
        return await session.request(command, body or {}, answer, timeout=timeout)
    finally:
        session.close(bye=False)
        context.destroy(linger=0)


async def broker_answers(address: str, timeout: float = 0.3, key: KeySpec = None) -> bool:
    """Whether a broker answers HELLO at ``address`` within ``timeout`` seconds."""
    body = {"version": VERSION, "name": "probe"}
    try:
        await ask(address, HELLO, body, HelloAnswer, timeout=timeout, key=key)
    except BrokerUnavailableError:
        return False
    return True


async def wait_for_broker(
    address: str, timeout: float, exited: Callable[[], bool] = lambda: False, key: KeySpec = None
) -> None:
    """Wait until a broker answers HELLO at ``address``.

    Args:
        exited: tells whether the process meant to serve there has exited (stop early).

    Raises:
        BrokerUnavailableError: it exited, or did not answer within ``timeout`` seconds.
        AuthenticationError: it refused the handshake.
    """
    deadline = time.monotonic() + timeout
    while not await broker_answers(address, key=key):
        if exited():
            raise BrokerUnavailableError(f"the broker meant for {address} exited")
        if time.monotonic() > deadline:
            raise BrokerUnavailableError(f"the broker at {address} did not answer in {timeout:g}s")
