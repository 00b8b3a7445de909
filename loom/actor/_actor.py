"""``Actor``: subclass it, bind handlers with ``@on``, use ``emit``/``request``/``reply``."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import zmq

from loom._histogram import Histogram
from loom.actor._durable import Durability
from loom.actor._event import Event, current_event
from loom.actor._gather import Assembled, Barrier, Collector
from loom.actor._link import Link
from loom.actor._receiver import Receiver
from loom.actor._router import Router
from loom.actor._verbs import Verbs
from loom.config import DEFAULT_BROKER, broker_address
from loom.errors import BrokerUnavailableError, ClosedError, HeaderError, LoomError
from loom.logs import DropCounter, configure_logging, get_logger, logging_configured
from loom.protocol import (
    ANNOUNCE,
    DEFAULT_MAX_PAYLOAD,
    HANDLER_BUCKETS,
    MAX_NAME_CHARS,
    REPLY,
    IdSource,
    Pattern,
    encode_topic,
)
from loom.session import KeySpec, ToolClient, check_endpoint, serve_until_signalled

__all__ = ["Actor", "ActorStats", "on"]

F = TypeVar("F", bound=Callable[..., Any])
_PATTERNS_ATTR = "__loom_patterns__"
_GROUP = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def on(
    *patterns: str,
    durable: str | None = None,
    group: str | None = None,
    redeliver: bool = False,
) -> Callable[[F], F]:
    """Bind an actor method (sync or async) to one or more topic patterns.

    With ``durable="NAME"`` the method gets the *durable* events of those patterns
    through the subscription NAME (kept by the broker while the actor is away; the
    broker needs a ``data_dir``), instead of live events.

    With ``group="NAME"`` the actor is a member of queue group NAME for these patterns:
    each event or request on them goes to one live member of the group, round robin
    (``docs/collaboration.md``). ``redeliver=True``: the handler may run again on
    another member when this one dies holding a request (else the requester gets a
    ``MemberLostError``).

    Raises:
        PatternError: a pattern is invalid (at class definition).
        ValueError: a group name that is not one token, or a group with ``durable``.
    """
    for text in patterns:
        Pattern(text)
    _check_group(group, durable)

    def bind(fn: F) -> F:
        tagged = tuple((text, durable, group, redeliver) for text in patterns)
        setattr(fn, _PATTERNS_ATTR, (*getattr(fn, _PATTERNS_ATTR, ()), *tagged))
        return fn

    return bind


def _check_group(group: str | None, durable: str | None) -> None:
    if group is None:
        return
    if durable is not None:
        raise ValueError("a binding is durable or in a queue group, not both")
    if not _GROUP.match(group):
        raise ValueError(f"group {group!r}: one token of letters, digits, _ and -, 1 to 64")


class ActorStats:
    """What an actor counted: handled events, handler errors, drops by reason."""

    __slots__ = (
        "dropped",
        "drops",
        "errors",
        "expired",
        "handled",
        "handler_seconds",
        "late_replies",
        "unmatched",
    )

    def __init__(self, drops: DropCounter) -> None:
        self.handled = 0
        self.handler_seconds = Histogram(HANDLER_BUCKETS)
        """Seconds handlers took, for a sample of events (see ``Receiver``)."""
        self.errors = 0
        self.unmatched = 0
        self.late_replies = 0
        self.expired = 0
        self.drops = drops
        self.dropped: dict[str, int] = {}
        """Events this actor dropped by topic (``realtime`` and ``background`` emits)."""

    def drop_topic(self, topic: str, reason: str) -> None:
        """Count one event dropped on ``topic`` (at most 10 000 topics, then ``(other)``)."""
        key = topic if topic in self.dropped or len(self.dropped) < 10_000 else "(other)"
        self.dropped[key] = self.dropped.get(key, 0) + 1
        self.drops.drop(reason, "the link is full: event dropped", topic=topic)


class Actor(Verbs):
    """A long-running process on the mesh.

    Args:
        name: how the actor signs its messages (default: the class name, lower case).
        broker: the broker's control endpoint; ``None`` means ``$LOOM_BROKER`` when started
            with ``run()``, else ``tcp://127.0.0.1:7700``.
        context: the zmq context to use; a private one by default.
        mailbox_size: events buffered before the actor stops reading (backpressure).
        connect_timeout: seconds ``start()`` waits for the broker to confirm the link.
        unique: no other live actor may have this name: ``start()`` waits (up to the
            connect timeout) for one of that name to be gone, then fails with
            ``DuplicateNameError``; False lets actors that all say so share a name.
        key: the CURVE keys to present: a key file, ``"none"`` (no CURVE), or ``None``
            for ``$LOOM_KEY``, else the Loom home's local identity.

    Raises:
        HeaderError: ``name`` is longer than 256 characters.
    """

    def __init__(
        self,
        name: str | None = None,
        broker: str | None = None,
        *,
        context: zmq.Context[Any] | None = None,
        mailbox_size: int = 10_000,
        connect_timeout: float = 10.0,
        unique: bool = True,
        key: KeySpec = None,
    ) -> None:
        self.key = key
        self.name = name or type(self).__name__.lower()
        if type(self.name) is not str or len(self.name) > MAX_NAME_CHARS:
            raise HeaderError(f"an actor's name is at most {MAX_NAME_CHARS} characters")
        self.broker = broker
        self.ids = IdSource()
        self.id = self.ids.prefix.hex()
        self.log = get_logger("loom.actor", actor=self.name)
        self.stats = ActorStats(DropCounter(self.log))
        self._context = context
        self._mailbox_size = mailbox_size
        self._connect_timeout = connect_timeout
        self.unique = unique
        self._router: Router[tuple[Callable[[Event], Any], bool]] = Router()
        self._receiver: Receiver | None = None
        self._lifecycle = asyncio.Lock()
        self._state = "idle"
        """idle -> starting -> running -> stopping -> idle"""
        self._abort = False
        self._accepting = False
        """Verbs allowed: from the confirmed link (``on_start`` may emit) to teardown."""
        self._stop_task: asyncio.Future[None] | None = None
        self._starting_task: asyncio.Task[Any] | None = None
        self.identity = "anonymous"
        """The identity the broker knows this actor's key as (set once connected)."""
        self._inbox = f"$inbox.{self.identity}.{self.id}"
        self._topics: dict[str, bytes] = {}
        self._pending: dict[bytes, asyncio.Future[Any] | Collector | Barrier] = {}
        self._max_payload = DEFAULT_MAX_PAYLOAD
        self._link: Link | None = None
        self._tools: ToolClient | None = None
        self._groups: dict[str, Router[tuple[Callable[[Event], Any], bool]]] = {}
        """Queue-group bindings: handlers by group name."""
        self._redeliver: dict[tuple[str, str], bool] = {}
        self._member_prefix = b"\x00"
        """``$q.<identity>.<id>.``: where the broker sends its queue-group deliveries."""
        self._streams: dict[str, Router[tuple[Callable[[Event], Any], bool]]] = {}
        """Durable subscriptions: handlers by subscription name."""
        self._durability: Durability | None = None
        self._background: collections.deque[tuple[bytes, bytes, bytes]] = collections.deque()
        self._background_task: asyncio.Task[None] | None = None
        self._hook_tasks: set[asyncio.Task[None]] = set()
        self._running = False
        """The sockets are usable (probes may go out)."""
        self._own_context = False
        self._probes = 0
        names = dict.fromkeys(n for k in reversed(type(self).__mro__) for n in vars(k))
        for attr in names:  # definition order, base classes first; overrides win
            tagged = getattr(getattr(type(self), attr, None), _PATTERNS_ATTR, ())
            for pattern, durable, group, redeliver in tagged:
                self._bind(pattern, getattr(self, attr), durable, group, redeliver)

    # --- hooks -------------------------------------------------------------------

    async def on_start(self) -> None:
        """Runs once the link is confirmed, before any handler. Override it."""

    async def on_stop(self) -> None:
        """Runs when the actor stops, while it can still emit. Override it."""

    def _report_stats(self) -> dict[str, Any]:
        """What the broker's metrics show of this actor (sent with each heartbeat)."""
        stats = self.stats
        receiver = self._receiver
        return {
            "handled": stats.handled,
            "errors": stats.errors,
            "unmatched": stats.unmatched,
            "dropped": sum(stats.dropped.values()),
            "mailbox": receiver.backlog() if receiver is not None else 0,
            "handler_seconds": [*stats.handler_seconds.counts, stats.handler_seconds.total],
        }

    async def on_link_lost(self) -> None:
        """Runs when the broker has been silent for ~3 heartbeats; tool calls waiting
        have failed with ``BrokerLostError``. Events emitted meanwhile may be lost.
        Override it."""

    async def on_link_restored(self) -> None:
        """Runs when the broker answers again (restarted, perhaps on new ports): the
        actor has said HELLO again, followed the endpoints it announces, and confirmed
        its subscriptions. Override it."""

    # --- lifecycle ---------------------------------------------------------------

    def run(self) -> None:
        """Start, serve until SIGINT or SIGTERM, stop. Blocks; for scripts.

        This is a program's edge: a broker given as ``None`` is taken from
        ``$LOOM_BROKER``, and logging goes to standard error at ``info`` unless the
        script configured it already.

        Raises:
            EndpointError: the broker's address is not of an accepted form.
            BrokerUnavailableError: no broker answered in time.
        """
        self.broker = check_endpoint(broker_address(self.broker))
        if not logging_configured():
            configure_logging()
        asyncio.run(serve_until_signalled(self.start, self.stop))

    async def start(self) -> None:
        """Connect, subscribe, and confirm the subscriptions end to end.

        When it returns, every event published afterwards on a bound pattern reaches
        this actor. Then ``on_start`` runs, then handlers start. Concurrent calls start
        the actor once; a call during ``stop()`` waits for it, then starts again.

        Raises:
            BrokerUnavailableError: the broker did not answer or confirm in time.
            VersionMismatchError: the broker speaks another protocol version.
            ClosedError: ``stop()`` was called while starting.
        """
        async with self._lifecycle:
            if self._state == "running":
                return
            self._state, self._abort = "starting", False
            self._starting_task = asyncio.current_task()
            try:
                await self._open_link()
                self._check_abort()
                await self._confirm()
                await self._confirm(inbox=True)
                await self._announce_groups()  # subscribed and confirmed: now a member
                self._check_abort()
                if self._streams:
                    assert self._durability is not None
                    await self._durability.announce(self._connect_timeout)
                self._accepting = True
                self.log.info("actor started", broker=self.broker, id=self.id)
                try:
                    await self.on_start()
                except Exception:
                    self.log.exception("on_start failed")
                    raise
                self._check_abort()
            except BaseException:
                await self._teardown(flush=self._accepting)
                raise
            assert self._receiver is not None
            self._state = "running"
            self._receiver.dispatch(name=f"loom-{self.name}")

    async def _open_link(self) -> None:
        self._own_context = self._context is None
        context = self._context if self._context is not None else zmq.Context()
        self._context = context
        if self.broker is None:
            self.broker = DEFAULT_BROKER
        link = self._link = Link(
            self.broker,
            context,
            name=self.name,
            log=self.log,
            hello=lambda: {"patterns": self._router.patterns(), "unique": self.unique},
            key=self.key,
        )
        hello = await link.open(self._connect_timeout)
        self._max_payload = hello.max_payload
        self.identity = hello.identity
        self._inbox = f"$inbox.{hello.identity}.{self.id}"  # topics of its own identity
        self._member_prefix = f"$q.{hello.identity}.{self.id}.".encode()
        self._tools = ToolClient(link.session, max_payload=self._max_payload)
        link.session.stats = self._report_stats
        link.session.lost_hooks.append(self._link_lost)
        link.session.restored_hooks.append(self._link_restored)
        assert link.sub is not None and link.pub is not None and link.inbox is not None
        self._sub, self._pub = link.sub, link.pub
        for prefix in self._router.prefixes():
            self._sub.subscribe(prefix)
        if self._groups:
            self._sub.subscribe(self._member_prefix)
        link.inbox.subscribe(self._inbox.encode())
        self._receiver = Receiver(
            self._sub,
            link.inbox,
            route=self._route,
            pending=self._pending,
            stats=self.stats,
            answer=self._answer,
            log=self.log,
            size=self._mailbox_size,
            handled=self._on_handled,
        )
        self._durability = Durability(
            link.session,
            routes=self._streams,
            enqueue=self._receiver.enqueue,
            drops=self.stats.drops,
            log=self.log,
        )
        self._receiver.open()
        self._running = True

    def _link_lost(self) -> None:
        if self._state == "running":
            task = asyncio.get_running_loop().create_task(self._hook(self.on_link_lost))
            self._hook_tasks.add(task)
            task.add_done_callback(self._hook_tasks.discard)

    async def _link_restored(self) -> None:
        link = self._link
        if link is None or self._state != "running":
            return
        try:
            moved = link.follow()
            if link.hello is not None:
                self._max_payload = link.hello.max_payload
                if self._tools is not None:
                    self._tools.max_payload = link.hello.max_payload
            await self._confirm()
            await self._confirm(inbox=True)
            await self._announce_groups()  # a restarted broker knows no groups
            if self._durability is not None:
                await self._durability.resend()
                await self._durability.announce(self._connect_timeout)
        except LoomError as exc:
            self.log.warning("could not restore the link yet", error=str(exc))
            raise  # the session tries again
        self.log.info("link restored", endpoints_moved=moved)
        await self._hook(self.on_link_restored)

    async def _hook(self, hook: Callable[[], Awaitable[None]]) -> None:
        try:
            await hook()
        except Exception:
            self.log.exception("hook failed", hook=hook.__name__)

    def _check_abort(self) -> None:
        if self._abort:
            raise ClosedError(f"actor {self.name!r} was stopped while starting")

    async def stop(self, grace: float = 5.0) -> None:
        """Run ``on_stop``, let the handler in progress finish (up to ``grace`` seconds,
        then it is cancelled), make sure the broker has everything this actor emitted,
        close the link. Events still queued are not handled.

        Idempotent; concurrent callers share one stop. Called while ``start()`` runs, it
        makes ``start()`` fail with ``ClosedError`` at its next step and waits for that.
        A cancelled caller does not cancel the stop itself.
        """
        if self._state == "idle":
            return
        if self._state == "starting":
            self._abort = True
            if asyncio.current_task() is self._starting_task:  # on_start stopping it
                return
            async with self._lifecycle:  # start() notices, tears down, releases
                return
        if self._stop_task is None:
            in_handler = current_event.get() is not None  # a handler stopping its own actor
            self._stop_task = asyncio.ensure_future(self._stop(grace, in_handler))
        await asyncio.shield(self._stop_task)

    async def _stop(self, grace: float, in_handler: bool) -> None:
        try:
            async with self._lifecycle:
                if self._state != "running":
                    return
                self._state = "stopping"
                if self._receiver is not None:
                    self._receiver.stopping = True
                try:
                    await self.on_stop()
                except Exception:
                    self.log.exception("on_stop failed")
                left = await self._teardown(grace, flush=True, wait_handler=not in_handler)
                self.log.info(
                    "actor stopped",
                    handled=self.stats.handled,
                    errors=self.stats.errors,
                    unhandled=left,
                )
        finally:
            self._stop_task = None

    async def _teardown(
        self, grace: float = 0.0, *, flush: bool = False, wait_handler: bool = True
    ) -> int:
        """Finish the handler in progress, flush, close. Always leaves the actor idle with
        its sockets closed, even when cancelled half-way (then without the flush)."""
        left = 0
        receiver = self._receiver
        try:
            if receiver is not None:
                left = await receiver.drain(grace, wait=wait_handler)
            self._accepting = False  # verbs fail from here on; the flush still runs
            self._fail_pending()
            if flush and receiver is not None and self._running:
                await self._flush_background(max(grace, 1.0))
                if self._durability is not None:
                    await self._durability.flush(max(grace, 1.0))
                await self._flush(max(grace, 1.0))
        finally:
            self._fail_pending()
            if receiver is not None:
                receiver.close()
            self._receiver = None
            self._running = self._accepting = False
            self._state = "idle"
            if self._link is not None:
                self._link.close()
                self._link = None
            if self._durability is not None:
                self._durability.close()
            self._tools = self._durability = None
            if self._own_context and self._context is not None:
                self._context.term()  # the flush made the broker hold what we sent
                self._context = None
        return left

    def _fail_pending(self) -> None:
        closed = ClosedError(f"actor {self.name!r} stopped")
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(closed)
        self._pending.clear()
        if self._tools is not None:
            self._tools.fail_all(closed)

    async def subscribe(
        self,
        pattern: str,
        handler: Callable[[Event], Any],
        *,
        durable: str | None = None,
        group: str | None = None,
        redeliver: bool = False,
    ) -> None:
        """Bind ``handler`` to ``pattern`` now; once this returns the subscription holds.
        ``durable="NAME"``: durable events through subscription NAME; ``group="NAME"``:
        as a member of a queue group (see :func:`on`).

        Raises:
            PatternError: the pattern is invalid.
            BrokerUnavailableError: a running actor's broker did not confirm in time.
            DurableError: the broker keeps no durable events.
            PermissionDeniedError: this actor's identity may not read there.
        """
        if self._state == "stopping":
            raise ClosedError(f"actor {self.name!r} is stopping")
        _check_group(group, durable)
        if group is not None:
            Pattern(pattern)
            first = not self._groups
            self._bind(pattern, handler, None, group, redeliver)
            if self._running and self._receiver is not None:
                try:
                    if first:
                        self._receiver.subscribe(self._member_prefix)
                        await self._confirm()
                    await self._announce_groups()
                except BaseException:  # refused (no right): the binding goes too
                    target = (handler, inspect.iscoroutinefunction(handler))
                    self._groups[group].remove(pattern, target)
                    if not self._groups[group].patterns():
                        del self._groups[group]
                    raise
            return
        link = self._link
        if durable is None and self._running and link is not None:
            Pattern(pattern)  # PatternError before asking anything
            # The broker grants subscriptions by right: ask first, so that a refusal is
            # an error here rather than a probe that never comes back.
            patterns = [*self._router.patterns(), pattern]
            body = {"patterns": patterns}
            await link.session.request(ANNOUNCE, body, timeout=self._connect_timeout)
        covered = self._router.prefixes()
        compiled = self._bind(pattern, handler, durable)
        if durable is not None:
            if self._running and self._durability is not None:
                await self._durability.announce(self._connect_timeout, [durable])
            return
        if self._running and self._receiver is not None:
            if compiled.prefix not in covered:  # one zmq subscription per prefix
                self._receiver.subscribe(compiled.prefix)
            await self._confirm()

    async def unsubscribe(
        self,
        pattern: str,
        handler: Callable[[Event], Any] | None = None,
        *,
        group: str | None = None,
    ) -> int:
        """Unbind ``handler`` (every handler, when ``None``) from ``pattern``, as written
        when bound (``@on`` ones too); returns how many bindings went (0: none was
        there). Events already in the mailbox still reach their handlers; none arrive
        for the pattern afterwards unless another binding covers them.

        Raises:
            ClosedError: the actor is stopping.
        """
        if self._state == "stopping":
            raise ClosedError(f"actor {self.name!r} is stopping")
        target = None if handler is None else (handler, inspect.iscoroutinefunction(handler))
        if group is not None:  # leave the queue group for this pattern
            router = self._groups.get(group)
            removed = router.remove(pattern, target) if router is not None else 0
            if router is not None and not router.patterns():
                del self._groups[group]
            if removed and self._running:
                with contextlib.suppress(LoomError):
                    await self._announce_groups(left=True)
            return removed
        before = self._router.prefixes()
        removed = self._router.remove(pattern, target)
        if not removed or not self._running or self._receiver is None:
            return removed
        for prefix in before - self._router.prefixes():
            self._receiver.unsubscribe(prefix)
        link = self._link
        if link is not None:  # the directory shows what the actor listens to
            body = {"patterns": self._router.patterns()}
            with contextlib.suppress(LoomError):
                await link.session.request(ANNOUNCE, body, timeout=self._connect_timeout)
        return removed

    def _bind(
        self,
        pattern: str,
        handler: Callable[[Event], Any],
        durable: str | None = None,
        group: str | None = None,
        redeliver: bool = False,
    ) -> Pattern:
        is_async = inspect.iscoroutinefunction(handler)
        if group is not None:
            compiled = self._groups.setdefault(group, Router()).add(pattern, (handler, is_async))
            self._redeliver[(group, compiled.text)] = redeliver
            return compiled
        router = self._router if durable is None else self._streams.setdefault(durable, Router())
        return router.add(pattern, (handler, is_async))

    def _group_bindings(self) -> list[tuple[str, str, bool]]:
        return [
            (group, text, self._redeliver.get((group, text), False))
            for group, router in self._groups.items()
            for text in router.patterns()
        ]

    def _route(self, topic: bytes) -> tuple[str, tuple[Any, ...]]:
        """The handlers ``topic`` reaches: a queue-group delivery
        (``$q.<identity>.<id>.<group>.<topic>``) reaches that group's handlers, with the
        topic as published; any other, the plain bindings'."""
        if topic.startswith(self._member_prefix) and self._groups:
            group, _, published = topic[len(self._member_prefix) :].partition(b".")
            router = self._groups.get(group.decode(errors="replace"))
            if router is not None and published:
                return router.route(published)
        return self._router.route(topic)

    async def _announce_groups(self, *, left: bool = False) -> None:
        """Tell the broker this actor's queue-group bindings (once its member topic is
        subscribed and confirmed: nothing sent to it before is lost); ``left``: even
        when there are none left."""
        link = self._link
        if link is None or not (self._groups or left):
            return
        body = {
            "patterns": self._router.patterns(),
            "groups": self._group_bindings(),
            "member": self.id,
        }
        await link.session.request(ANNOUNCE, body, timeout=self._connect_timeout)

    async def _flush_background(self, timeout: float) -> None:
        task = self._background_task
        if task is not None:
            await asyncio.wait({task}, timeout=timeout)
            if self._background:
                self.log.warning("background events not sent", events=len(self._background))

    def _on_handled(self, event: Event) -> None:
        if self._durability is not None:
            self._durability.on_handled(event)

    async def flush(self, timeout: float = 10.0) -> int:
        """Wait until the broker has everything this actor emitted: background events
        sent, durable (``reliable``) events logged and acknowledged, and every other
        event forwarded (a probe through its own inbox comes back behind them).

        Returns:
            How many durable events are still unacknowledged when ``timeout`` (seconds,
            for each of the three waits) has passed (0: all of them are logged).

        Raises:
            ClosedError: the actor is not running.
        """
        if not self._accepting:
            raise ClosedError(f"actor {self.name!r} is not running")
        await self._flush_background(timeout)
        left = await self._durability.flush(timeout) if self._durability is not None else 0
        await self._flush(timeout)
        return left

    async def _flush(self, timeout: float) -> None:
        """Make sure what this actor published has reached the broker.

        libzmq may drop a PUB/XPUB socket's queue when it is closed, whatever the linger
        (measured here: the last few hundred of 50 000 messages, even with linger -1). A
        probe through our own inbox travels behind everything sent before it, so once it
        is back, the broker has forwarded all of it.
        """
        try:
            await self._confirm(inbox=True, timeout=timeout)
        except (BrokerUnavailableError, ClosedError):
            self.log.warning("could not confirm the broker got the last messages", timeout=timeout)

    async def barrier(
        self, name: str, participants: Iterable[str] | int, *, timeout: float = 30.0
    ) -> Assembled:
        """Wait until every participant has arrived at barrier ``name`` (or ``timeout``
        passes): the named actors (this one included), or a count of them. Safe inside
        a handler (arrivals are taken off the link by the reader). A barrier's name is
        for one meeting: use ``"step.3"`` for the third round.

        Each participant publishes its arrival on ``barrier.<name>`` (so, on a secure
        broker, its identity needs the publish and subscribe rights there) and says
        it again whenever it hears someone new, so that one who came later hears it.

        Raises:
            ValueError: this actor already waits at that barrier.
            ClosedError: the actor stopped meanwhile.
            BrokerUnavailableError: the barrier's subscription was not confirmed.
        """
        receiver = self._receiver
        if receiver is None:
            raise ClosedError(f"actor {self.name!r} is not running")
        started = time.monotonic()
        topic = f"barrier.{name}"
        key = encode_topic(topic)
        if key in self._pending:
            raise ValueError(f"already waiting at barrier {name!r}")
        expected = None if isinstance(participants, int) else {*participants, self.name}
        count = participants if isinstance(participants, int) else None
        result = Assembled(name)
        waiting = Barrier(result, expected, count)
        self._pending[key] = waiting
        wanted = [False]
        saying: list[asyncio.Task[None]] = []

        async def repeat() -> None:
            while wanted[0]:  # an arrival heard while saying it: say it once more after
                wanted[0] = False
                with contextlib.suppress(LoomError):
                    await self.emit(topic, {"barrier": name})

        def say_again() -> None:  # one saying at a time: a burst of arrivals is one more
            wanted[0] = True
            if not saying or saying[0].done():
                saying[:] = [asyncio.get_running_loop().create_task(repeat())]

        try:
            receiver.subscribe_inbox(key)
            await self._confirm(inbox=True, fresh=True)  # the arrivals can be heard
            waiting.on_new = say_again
            waiting.arrive(self.name)
            await self.emit(topic, {"barrier": name})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, timeout - (time.monotonic() - started))):
                    await waiting.finished
        finally:
            self._pending.pop(key, None)
            if self._receiver is not None:
                self._receiver.unsubscribe_inbox(key)
        if expected is not None:
            result.missing = sorted(expected - set(result.arrived))
        result.elapsed = time.monotonic() - started
        return result

    async def _confirm(
        self, *, inbox: bool = False, fresh: bool = False, timeout: float | None = None
    ) -> None:
        """Publish probes to a topic we subscribe to until one comes back.

        Subscriptions travel in order on one pipe, so a probe received on the newest
        subscription proves the broker holds all the earlier ones on that socket, and
        that our own publisher has the broker's subscribe-all. Events use a fresh probe
        topic each time; the inbox socket's only subscription is the inbox itself.

        Raises:
            BrokerUnavailableError: no probe came back within the connect timeout.
            ClosedError: the actor was stopped meanwhile.
        """
        receiver = self._receiver
        if receiver is None:
            raise ClosedError(f"actor {self.name!r} is not running")
        if inbox and not fresh:
            topic = self._inbox
        else:  # a new subscription, newest on its socket: its probe proves the earlier
            self._probes += 1
            topic = f"$probe.{self.identity}.{self.id}.{self._probes}"
            if inbox:
                receiver.subscribe_inbox(topic.encode())
            else:
                receiver.subscribe(topic.encode())
        probe_id = self.ids.next()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[probe_id] = fut
        frames = self._frames(topic, REPLY, None, correlation_id=probe_id, probe=True)
        deadline = time.monotonic() + (timeout if timeout is not None else self._connect_timeout)
        interval = 0.002
        try:
            with receiver.overdraft():
                while not fut.done():
                    if time.monotonic() > deadline:
                        raise BrokerUnavailableError(
                            f"broker at {self.broker} did not answer a probe in time"
                        )
                    if not self._running:
                        raise ClosedError(f"actor {self.name!r} stopped")
                    self._write(frames)
                    await asyncio.wait({fut}, timeout=interval)
                    interval = min(interval * 2, 0.1)
            fut.result()  # ClosedError if stop() failed it
        finally:
            self._pending.pop(probe_id, None)
            if self._running and fresh and inbox:
                receiver.unsubscribe_inbox(topic.encode())
            elif not inbox and self._running:
                receiver.unsubscribe(topic.encode())
