"""The verbs an actor uses: ``emit``, ``request``, ``reply``, ``tool``, ``directory``."""

from __future__ import annotations

import asyncio
import collections
import re
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

import zmq

from loom.actor._durable import Durability
from loom.actor._event import Event, current_event
from loom.actor._gather import Awarded, Barrier, Collector, Gathered, Policy, needed
from loom.errors import (
    ClosedError,
    HeaderError,
    HopLimitError,
    LoomError,
    NoReplyToError,
    RemoteError,
    RequestTimeoutError,
)
from loom.protocol import (
    EVENT,
    MAX_HOPS,
    MAX_NAME_CHARS,
    REPLY,
    REQUEST,
    IdSource,
    Pattern,
    encode_payload,
    encode_topic,
    pack_header,
    send_message,
)
from loom.session import Directory, ToolClient

__all__ = ["Verbs"]

_MAX_TOPIC_CACHE = 10_000
_THREAD = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_BACKGROUND_LIMIT = 100_000


class Verbs:
    """What an :class:`~loom.actor.Actor` does on the mesh once running. The lifecycle
    (``Actor``) owns the sockets and sets the state these methods read."""

    name: str
    ids: IdSource
    _accepting: bool
    """Verbs allowed: from the confirmed link (``on_start`` may emit) to teardown."""
    _running: bool
    """The sockets are usable (probes may go out)."""
    _inbox: str
    _topics: dict[str, bytes]
    _pending: dict[bytes, asyncio.Future[Any] | Collector | Barrier]
    _max_payload: int
    _pub: zmq.Socket[bytes]
    _tools: ToolClient | None
    _durability: Durability | None
    _background: collections.deque[tuple[bytes, bytes, bytes]]
    _background_task: asyncio.Task[None] | None
    stats: Any

    async def emit(
        self, topic: str, data: Any = None, *, thread: str | None = None, qos: str = "standard"
    ) -> None:
        """Publish an event, with a quality of service (``docs/qos.md``):

        - ``standard``: not lost between here and the broker; when the broker cannot keep
          up, ``emit`` waits (backpressure). It returns at once when there is room.
        - ``realtime``: never waits; when the link is full the event is dropped and
          counted per topic (``stats.dropped``).
        - ``reliable``: the broker logs it (durable; it needs a ``data_dir``) before
          forwarding it, and acknowledges it; ``emit`` waits while 1000 events await
          acknowledgement, and unacknowledged ones are sent again after a broker restart
          (the broker drops the copies).
        - ``background``: queued here (up to 100 000, then dropped and counted) and sent
          when the link has room, after everything else.

        Raises:
            ClosedError: the actor is not running.
            TopicError: the topic is invalid.
            EncodeError: ``data`` cannot be encoded with msgpack.
            PayloadTooLargeError: the encoded data exceeds the broker's limit.
            HopLimitError: emitted too many handlers deep (a loop, most likely).
            HeaderError: ``thread`` is not a string of at most 256 characters.
            ValueError: an unknown ``qos``.
        """
        if qos == "standard":
            frames = self._frames(topic, EVENT, data, thread=thread)
            if not self._write(frames):
                await self._write_waiting(frames)
        elif qos == "realtime":
            if not self._write(self._frames(topic, EVENT, data, thread=thread)):
                self.stats.drop_topic(topic, "realtime")
        elif qos == "reliable":
            mid = self.ids.next()
            frames = self._frames(topic, EVENT, data, thread=thread, mid=mid)
            assert self._durability is not None
            await self._durability.publish(mid, *frames)
        elif qos == "background":
            frames = self._frames(topic, EVENT, data, thread=thread)
            if len(self._background) >= _BACKGROUND_LIMIT:
                self.stats.drop_topic(topic, "background")
                return
            self._background.append(frames)
            if self._background_task is None:
                self._background_task = asyncio.get_running_loop().create_task(
                    self._send_background()
                )
        else:
            raise ValueError(f"qos must be standard, realtime, reliable or background: {qos!r}")

    async def emit_thread(self, thread: str, data: Any = None, *, qos: str = "standard") -> None:
        """Publish on the thread's broadcast topic, ``thread.<thread>``, as part of that
        thread: everyone in a conversation subscribes to it (``@on("thread.<id>")``, or
        ``thread.*`` for every conversation). Emits inside a handler carry the handled
        event's thread anyway; ``loom trace --thread ID`` shows a thread as one lane.

        Raises:
            ValueError: ``thread`` is not one topic token (letters, digits, ``_``, ``-``,
                1 to 64).
            As for :meth:`emit`.
        """
        if not _THREAD.match(thread):
            raise ValueError(f"thread {thread!r}: one token of letters, digits, _ and -, 1 to 64")
        await self.emit(f"thread.{thread}", data, thread=thread, qos=qos)

    async def _send_background(self) -> None:
        """Send background events while the link has room; yield to everything else."""
        queue = self._background
        try:
            while queue and self._running:
                for _ in range(64):
                    if not queue or not self._write(queue[0]):
                        break
                    queue.popleft()
                else:
                    await asyncio.sleep(0)
                    continue
                await asyncio.sleep(0.001 if queue else 0)
        finally:
            self._background_task = None

    async def request(
        self,
        topic: str,
        data: Any = None,
        *,
        timeout: float = 5.0,
        thread: str | None = None,
        accept: Literal["first", "first_success"] = "first",
    ) -> Any:
        """Publish a request and return the first reply's data; with
        ``accept="first_success"``, the first reply that is not an error (failures
        before it are passed over, up to the deadline).

        Raises:
            RequestTimeoutError: no reply (no successful one) within ``timeout`` seconds
                and no failure either (a ``TimeoutError``).
            RemoteError: the responding handler raised (``first_success``: every reply
                by the deadline was a failure; the first one is raised).
            ClosedError: the actor stopped while waiting.
            TopicError, EncodeError, PayloadTooLargeError: as for ``emit``.
            ValueError: an unknown ``accept``.
        """
        if accept == "first_success":
            gathered = await self.gather(
                topic, data, policy=1, successful=True, timeout=timeout, thread=thread, expect=()
            )
            if gathered.replies:
                return gathered.values()[0]
            if gathered.failed:
                raise next(iter(gathered.failed.values()))
            raise RequestTimeoutError(f"no successful reply on {topic!r} within {timeout:g}s")
        if accept != "first":
            raise ValueError(f"accept must be 'first' or 'first_success': {accept!r}")
        mid = self.ids.next()
        frames = self._request_frames(topic, data, mid, timeout, thread)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[mid] = fut
        try:
            async with asyncio.timeout(timeout):
                if not self._write(frames):
                    await self._write_waiting(frames)
                return await fut
        except TimeoutError:
            raise RequestTimeoutError(f"no reply on {topic!r} within {timeout:g}s") from None
        finally:
            self._pending.pop(mid, None)

    async def gather(
        self,
        topic: str,
        data: Any = None,
        *,
        policy: Policy = "all",
        successful: bool = False,
        timeout: float = 5.0,
        thread: str | None = None,
        expect: int | Iterable[str] | None = None,
    ) -> Gathered:
        """Scatter-gather: publish one request to every responder on ``topic`` and
        collect their replies until the policy is met, every expected responder has
        answered, or ``timeout`` passes. Never raises for what responders do: the result
        says who answered, who failed and who is missing; replies after it are dropped
        (counted as late). Safe inside a handler: replies are taken off the link by the
        reader, not queued behind the running handler.

        Args:
            policy: ``"any"``, an int k (the first k), ``"majority"`` or ``"all"``.
            successful: count only successful replies toward the policy.
            expect: who is asked: names, or how many; default the actors (other than
                this one) whose subscriptions match ``topic``, from the directory (when
                this identity may read it; else unknown, and ``all`` waits for the
                deadline).

        Raises:
            ValueError: an unknown policy.
            ClosedError: the actor stopped while waiting.
            TopicError, EncodeError, PayloadTooLargeError: as for ``emit``.
        """
        started = time.monotonic()
        expected: list[str] | None
        if expect is None:
            expected = await self._responders(topic)
        elif isinstance(expect, int):
            expected = None
        else:
            expected = list(dict.fromkeys(expect)) or None
        count = expect if isinstance(expect, int) else None if expected is None else len(expected)
        need = needed(policy, count)
        result = Gathered(topic, expected=expected)
        mid = self.ids.next()
        frames = self._request_frames(topic, data, mid, timeout, thread)
        collector = Collector(result, need, successful=successful)
        if need == 0:  # nobody to wait for
            result.complete = True
        else:
            self._pending[mid] = collector
            try:
                async with asyncio.timeout(timeout):
                    if not self._write(frames):
                        await self._write_waiting(frames)
                    await collector.finished
            except TimeoutError:
                pass
            finally:
                self._pending.pop(mid, None)
        answered = result.replies.keys() | result.failed.keys()
        result.missing = [name for name in expected or () if name not in answered]
        result.elapsed = time.monotonic() - started
        return result

    async def contract(
        self,
        topic: str,
        task: Any,
        *,
        score: Callable[[Any], float],
        bid_timeout: float = 2.0,
        timeout: float = 30.0,
        expect: int | Iterable[str] | None = None,
    ) -> Awarded:
        """A FIPA contract net on ``topic``: call for proposals (every responder gets
        ``{"phase": "cfp", "task"}`` and answers a bid, or ``{"refuse": reason}``),
        collected until ``bid_timeout``; the highest ``score(bid)`` wins and gets
        ``{"phase": "award", "task", "to": winner, "proposal"}`` as a request (only the
        winner answers: its handler returns the result; the others return ``None``); the
        rest get ``{"phase": "reject", "task", "to": [names]}`` as an event. Cancelling
        the awaiting task tells the winner ``{"phase": "cancel", "to": winner}``.

        Returns what happened; never raises for what bidders do.

        Raises:
            ClosedError: the actor stopped meanwhile.
            TopicError, EncodeError, PayloadTooLargeError: as for ``emit``.
        """
        cfp = await self.gather(
            topic, {"phase": "cfp", "task": task}, timeout=bid_timeout, expect=expect
        )
        outcome = Awarded(task, missing=cfp.missing)
        for name, error in cfp.failed.items():
            outcome.refused[name] = str(error)
        for name, bid in cfp.replies.items():
            if isinstance(bid, dict) and "refuse" in bid:
                outcome.refused[name] = str(bid["refuse"])
            else:
                outcome.proposals[name] = bid
        ranked = sorted(outcome.proposals, key=lambda n: score(outcome.proposals[n]), reverse=True)
        if not ranked:
            return outcome
        winner = outcome.winner = ranked[0]
        if ranked[1:]:
            await self.emit(topic, {"phase": "reject", "task": task, "to": ranked[1:]})
        award = {
            "phase": "award",
            "task": task,
            "to": winner,
            "proposal": outcome.proposals[winner],
        }
        try:
            outcome.result = await self.request(topic, award, timeout=timeout)
        except (RemoteError, RequestTimeoutError) as exc:
            outcome.error = exc
        except asyncio.CancelledError:
            cancel = {"phase": "cancel", "task": task, "to": winner}
            asyncio.get_running_loop().create_task(self.emit(topic, cancel, qos="realtime"))
            raise
        return outcome

    def _request_frames(
        self, topic: str, data: Any, mid: bytes, timeout: float, thread: str | None
    ) -> tuple[bytes, bytes, bytes]:
        """A request's frames: replies to this actor's inbox, stale after ``timeout``."""
        deadline = time.time() + timeout
        return self._frames(
            topic, REQUEST, data, mid=mid, reply_to=self._inbox, deadline=deadline, thread=thread
        )

    async def _responders(self, topic: str) -> list[str] | None:
        """The other live actors subscribed to ``topic`` (None if unknown)."""
        try:
            directory = await self.directory()
        except LoomError:  # no right to read it, or the broker is slow: unknown
            return None
        names = []
        for actor in directory.actors:
            if actor.name == self.name:
                continue
            try:
                if any(Pattern(pattern).matches(topic) for pattern in actor.patterns):
                    names.append(actor.name)
            except LoomError:
                continue
        return names

    async def reply(self, event: Event, data: Any) -> None:
        """Answer a request (a handler may also just return the answer).

        Raises:
            NoReplyToError: ``event`` is not a request.
            EncodeError, PayloadTooLargeError: as for ``emit``.
        """
        await self._answer(event, REPLY, data)

    async def _answer(self, event: Event, kind: int, data: Any) -> None:
        envelope = event.envelope
        if envelope.reply_to is None:
            raise NoReplyToError(f"event on {event.topic!r} from {event.sender!r} is not a request")
        frames = self._frames(envelope.reply_to, kind, data, correlation_id=envelope.id)
        event.replied = True
        if not self._write(frames):
            await self._write_waiting(frames)

    async def tool(
        self,
        name: str,
        args: dict[str, Any] | None = None,
        /,
        *,
        timeout: float | None = None,
        on_progress: Callable[[Any], Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Call the tool ``name`` on some worker and return its result.

        Arguments go as a dict, as keywords, or both (keywords win). A tool parameter
        called ``timeout`` or ``on_progress`` must go in the dict.

        Args:
            timeout: seconds the call may run without reporting progress (default: the
                tool's own, else the broker's).
            on_progress: called with the data of each progress report.

        Raises:
            ToolError: a subclass per failure code: ``UnknownToolError``,
                ``InvalidParamsError``, ``ToolTimeoutError``, ``WorkerLostError``,
                ``ToolFailedError``, ``OverloadedError``, ``CallCancelledError``,
                ``ResultTooLargeError``, ``BrokerLostError``.
            ClosedError: the actor is not running, or stopped while waiting.
            EncodeError, PayloadTooLargeError: the arguments cannot be sent.

        Cancelling the awaiting task cancels the call on the worker.
        """
        if self._tools is None or not self._accepting:
            raise ClosedError(f"actor {self.name!r} is not running")
        if kwargs:
            args = {**(args or {}), **kwargs}
        parent = current_event.get()
        trace = None if parent is None else parent.envelope.trace_id
        return await self._tools.call(
            name, args, timeout=timeout, on_progress=on_progress, trace=trace
        )

    async def directory(self, timeout: float = 5.0) -> Directory:
        """What the broker knows now: live actors, workers, tools with their schemas.

        Raises:
            ClosedError: the actor is not running.
            BrokerUnavailableError: no answer within ``timeout`` seconds.
        """
        if self._tools is None:
            raise ClosedError(f"actor {self.name!r} is not running")
        return await self._tools.directory(timeout)

    async def approve(self, approval_id: int, reason: str = "") -> None:
        """Let a call that waits for approval run (approvers subscribe to
        ``$approval.request.**`` to hear of them).

        Raises:
            ClosedError: the actor is not running.
            ApprovalError: no call waits under that id.
        """
        await self._decide(approval_id, True, reason)

    async def deny(self, approval_id: int, reason: str = "") -> None:
        """Answer a call that waits for approval DENIED, with ``reason``.

        Raises:
            ClosedError: the actor is not running.
            ApprovalError: no call waits under that id.
        """
        await self._decide(approval_id, False, reason)

    async def _decide(self, approval_id: int, approve: bool, reason: str) -> None:
        if self._tools is None:
            raise ClosedError(f"actor {self.name!r} is not running")
        await self._tools.decide(approval_id, approve, reason=reason, by=self.name)

    def _frames(
        self,
        topic: str,
        kind: int,
        data: Any,
        *,
        mid: bytes | None = None,
        correlation_id: bytes | None = None,
        reply_to: str | None = None,
        deadline: float | None = None,
        thread: str | None = None,
        probe: bool = False,
    ) -> tuple[bytes, bytes, bytes]:
        if not (self._accepting or (probe and self._running)):
            raise ClosedError(f"actor {self.name!r} is not running")
        topic_frame = self._topics.get(topic)
        if topic_frame is None:
            topic_frame = encode_topic(topic)
            if len(self._topics) < _MAX_TOPIC_CACHE:
                self._topics[topic] = topic_frame
        payload = encode_payload(data, self._max_payload)
        if mid is None:
            mid = self.ids.next()
        if thread is not None and (type(thread) is not str or len(thread) > MAX_NAME_CHARS):
            raise HeaderError(f"a thread id is a string of at most {MAX_NAME_CHARS} characters")
        parent = current_event.get()
        if parent is None:
            hops, trace, parent_id = 0, mid, None
        else:
            penv = parent.envelope
            hops = penv.hops + 1
            if hops > MAX_HOPS:
                raise HopLimitError(f"emit on {topic!r} is {hops} handlers deep (limit {MAX_HOPS})")
            trace, parent_id = penv.trace_id or mid, penv.id
            if thread is None:
                thread = penv.thread_id
        header = pack_header(
            kind,
            mid,
            self.name,
            time.time(),
            correlation_id,
            reply_to,
            thread,
            deadline,
            hops,
            trace,
            parent_id,
        )
        return topic_frame, header, payload

    def _write(self, frames: tuple[bytes, bytes, bytes]) -> bool:
        try:
            send_message(self._pub, *frames)
        except zmq.Again:
            return False
        return True

    async def _write_waiting(self, frames: tuple[bytes, bytes, bytes]) -> None:
        delay = 0.0005
        while True:
            await asyncio.sleep(delay)
            if not self._running:
                raise ClosedError(f"actor {self.name!r} stopped while sending")
            if self._write(frames):
                return
            delay = min(delay * 2, 0.05)
