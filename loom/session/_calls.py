"""``ToolClient``: tool calls and approvals over a session (what ``Actor.tool``, ``loom
call`` and ``loom approve`` use)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import zmq
from pydantic import ValidationError

from loom.config import DEFAULT_BROKER
from loom.errors import (
    BrokerLostError,
    ClosedError,
    ProtocolError,
    ToolError,
    ToolTimeoutError,
    tool_error,
)
from loom.logs import get_logger
from loom.protocol import (
    APPROVALS,
    APPROVE,
    CANCEL,
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_MAX_TIMEOUT,
    DIRECTORY,
    FAIL,
    PROGRESS,
    RESULT,
    ApprovalsAnswer,
    Empty,
    decode_failure,
    decode_ref,
    decode_value,
    encode_call,
    encode_ref,
    encode_value,
)
from loom.session._directory import Directory
from loom.session._security import KeySpec
from loom.session._session import Session

__all__ = ["ToolClient"]

ProgressCallback = Callable[[Any], Any]


class _Pending:
    __slots__ = ("future", "on_progress", "timeout", "timer", "tool")

    def __init__(
        self,
        future: asyncio.Future[Any],
        tool: str,
        timeout: float | None,
        on_progress: ProgressCallback | None,
    ) -> None:
        self.future = future
        self.tool = tool
        self.timeout = timeout
        self.on_progress = on_progress
        self.timer: asyncio.Timeout | None = None


def _margin(timeout: float) -> float:
    """How long past a call's timeout the client waits for the broker's own TIMEOUT."""
    return 0.5 + 0.1 * min(timeout, 60.0)


class ToolClient:
    """Calls tools over a :class:`Session`.

    The broker enforces every call's deadline. The client keeps its own, a little later
    (the broker's longest timeout when the call gives none), restarted by each progress
    report, in case the broker cannot answer; a broker that goes silent or forgets this
    client (RESET) fails the waiting calls with ``BrokerLostError`` sooner.

    Args:
        session: an open session to the broker.
        max_payload: the largest arguments map the broker accepts, bytes.
    """

    def __init__(self, session: Session, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.session = session
        self.max_payload = max_payload
        hello = session.hello
        self.max_timeout = hello.max_call_timeout if hello is not None else DEFAULT_MAX_TIMEOUT
        """The longest timeout the broker grants a call (its HELLO says)."""
        self.late = 0
        """Answers that arrived for calls no longer waiting (cancelled, timed out)."""
        self._pending: dict[int, _Pending] = {}
        self._ids = 0
        self._owned: tuple[zmq.Context[Any], Session] | None = None
        session.handlers[RESULT] = self._on_result
        session.handlers[FAIL] = self._on_fail
        session.handlers[PROGRESS] = self._on_progress
        session.lost_hooks.append(self._on_lost)

    @classmethod
    async def connect(
        cls,
        broker: str = DEFAULT_BROKER,
        *,
        name: str = "client",
        timeout: float = 5.0,
        key: KeySpec = None,
    ) -> ToolClient:
        """A client with its own context and session; close it with ``close()`` (or use
        ``async with``).

        Raises:
            BrokerUnavailableError: the broker did not answer within ``timeout`` seconds.
            VersionMismatchError: the broker speaks another protocol version.
            AuthenticationError: the broker refused the handshake.
            KeyFileError: the keys (``key``: see ``peer_key``) cannot be read.
        """
        context: zmq.Context[Any] = zmq.Context()
        log = get_logger("loom.client")
        try:
            session = Session(broker, context, name=name, role="client", log=log, key=key)
            hello = await session.open(timeout)
        except BaseException:
            context.term()
            raise
        client = cls(session, max_payload=hello.max_payload)
        client._owned = (context, session)
        return client

    async def __aenter__(self) -> ToolClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Fail the calls still waiting with ``ClosedError``; close what ``connect`` opened."""
        self.fail_all(ClosedError("the tool client was closed"))
        if self._owned is not None:
            context, session = self._owned
            self._owned = None
            session.close()
            context.term()

    async def call(
        self,
        tool: str,
        args: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        trace: bytes | None = None,
    ) -> Any:
        """Call ``tool`` with ``args`` and return its result.

        Args:
            tool: the tool's name.
            args: its arguments, by name.
            timeout: seconds the call may take from now; each progress report pushes the
                deadline to ``timeout`` seconds after it (default: the tool's own, else the
                broker's).
            on_progress: called with each progress report's data.
            trace: the trace id the call belongs to.

        Raises:
            ToolError: a subclass per code (``UnknownToolError``, ``InvalidParamsError``,
                ``ToolTimeoutError``, ``WorkerLostError``, ``ToolFailedError``,
                ``OverloadedError``, ``CallCancelledError``, ``ResultTooLargeError``,
                ``BrokerLostError``).
            EncodeError, PayloadTooLargeError: ``args`` cannot be sent.
            ClosedError: the client was closed while waiting.

        Cancelling the awaiting task cancels the call on its worker.
        """
        body = encode_value(args if args is not None else {}, self.max_payload)
        if self.session.closed:
            raise ClosedError("the tool client is closed")
        self._ids += 1
        call_id = self._ids
        loop = asyncio.get_running_loop()
        # The broker answers TIMEOUT on time; this timer only guards against a broker that
        # cannot (gone quiet, or never answering): it allows the longest timeout the
        # broker grants when none is given, and every progress report restarts it.
        limit = timeout if timeout is not None else self.max_timeout
        entry = _Pending(loop.create_future(), tool, limit, on_progress)
        self._pending[call_id] = entry
        frames = encode_call(call_id, tool, timeout, trace, body)
        try:
            async with asyncio.timeout(limit + _margin(limit)) as entry.timer:
                if not self.session.send(frames):  # full: wait, unless the call fails meanwhile
                    await self.session.send_waiting(frames, abandon=entry.future.done)
                return await entry.future
        except ToolError:
            raise
        except TimeoutError:
            self.session.send(encode_ref(CANCEL, call_id))
            raise ToolTimeoutError(
                f"{tool}: no answer from the broker within {limit:g}s", tool=tool
            ) from None
        except asyncio.CancelledError:
            self.session.send(encode_ref(CANCEL, call_id))
            raise
        finally:
            self._pending.pop(call_id, None)

    async def directory(self, timeout: float = 5.0) -> Directory:
        """What the broker knows: live actors, workers, and tools with their schemas.

        Raises:
            BrokerUnavailableError: no answer within ``timeout`` seconds.
            ProtocolError: the answer is not a directory.
        """
        body = await self.session.request(DIRECTORY, {}, timeout=timeout)
        try:
            return Directory.model_validate(body)
        except ValidationError as exc:
            raise ProtocolError("answer", f"unreadable directory: {exc}") from None

    async def approvals(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The calls waiting for approval: ``id``, ``tool``, ``args``, ``caller``,
        ``requested`` and ``expires`` (Unix seconds).

        Raises:
            BrokerUnavailableError: no answer within ``timeout`` seconds.
        """
        answer = await self.session.request(APPROVALS, {}, ApprovalsAnswer, timeout=timeout)
        return answer.pending

    async def decide(
        self,
        approval_id: int,
        approve: bool,
        *,
        reason: str = "",
        by: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        """Approve or deny a waiting call.

        Args:
            approval_id: the request's ``id``.
            approve: let it run (True) or answer it DENIED (False).
            reason: told to the caller (with a denial) and published.
            by: the approver's name (default: this client's).

        Raises:
            ApprovalError: no call waits under that id (decided, expired or cancelled).
            BrokerUnavailableError: no answer within ``timeout`` seconds.
        """
        body = {"id": approval_id, "approve": approve, "reason": reason, "by": by}
        await self.session.request(APPROVE, body, Empty, timeout=timeout)

    def fail_all(self, error: Exception) -> None:
        """Fail every waiting call with ``error``."""
        for entry in self._pending.values():
            if not entry.future.done():
                entry.future.set_exception(error)
        self._pending.clear()

    def _on_lost(self) -> None:
        if self._pending:
            self.fail_all(BrokerLostError(f"the broker at {self.session.address} went silent"))

    def _take(self, meta: bytes) -> _Pending | None:
        entry = self._pending.pop(decode_ref(meta), None)
        if entry is None or entry.future.done():
            self.late += 1
            return None
        return entry

    def _on_result(self, meta: bytes, body: bytes) -> None:
        entry = self._take(meta)
        if entry is not None:
            try:
                entry.future.set_result(decode_value(body))
            except ProtocolError as exc:
                entry.future.set_exception(exc)

    def _on_fail(self, meta: bytes, body: bytes) -> None:
        entry = self._take(meta)
        if entry is not None:
            try:
                info = decode_failure(body)
            except ProtocolError as exc:
                entry.future.set_exception(exc)
                return
            code, message = info.pop("code"), info.pop("message")
            details = {str(key): value for key, value in info.items() if key != "tool"}
            entry.future.set_exception(tool_error(code, message, tool=entry.tool, details=details))

    def _on_progress(self, meta: bytes, body: bytes) -> None:
        entry = self._pending.get(decode_ref(meta))
        if entry is None:
            return
        timer = entry.timer
        if timer is not None and entry.timeout is not None and not timer.expired():
            loop = asyncio.get_running_loop()
            timer.reschedule(loop.time() + entry.timeout + _margin(entry.timeout))
        if entry.on_progress is not None:
            try:
                entry.on_progress(decode_value(body))
            except Exception as exc:  # the caller's callback: log it, the call goes on
                get_logger("loom.client").warning("on_progress failed", exc_info=exc)
