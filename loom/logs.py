"""Logging set-up (structlog) and the rate-limited drop counter every peer uses."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, MutableMapping
from contextvars import ContextVar
from typing import Any, TextIO

import structlog

__all__ = ["DropCounter", "configure_logging", "get_logger", "handled_event"]


def configure_logging(
    *, json: bool = False, level: str = "info", stream: TextIO | None = None
) -> None:
    """Configure structlog once, at a program's edge (CLI, ``Actor.run``).

    Args:
        json: one JSON object per line (for machines) instead of the console renderer.
        level: the minimum level name (``debug``, ``info``, ``warning``...).
        stream: where lines go; standard output by default.
    """
    renderer: Any
    if json:
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _handled_event,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stdout),
        cache_logger_on_first_use=False,
    )


handled_event: ContextVar[Any] = ContextVar("loom_handled_event", default=None)
"""The event whose handler is running (an actor sets it, ``loom.actor.current_event`` is
this variable): anything with ``topic`` and ``trace_id``. Log lines written meanwhile name
them; it lives here, at the bottom, so logging needs nothing from above."""


def _handled_event(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Add the topic and trace id of the event being handled, when a line is logged inside
    an actor's handler (read at log time: handling an event costs nothing more)."""
    event = handled_event.get()
    if event is not None:
        event_dict.setdefault("topic", event.topic)
        event_dict.setdefault("trace", event.trace_id)
    return event_dict


def get_logger(name: str, **context: Any) -> Any:
    """A structlog logger bound to ``component=name`` and the given context."""
    return structlog.get_logger(name).bind(component=name, **context)


class DropCounter:
    """Counts dropped messages by reason; logs the first of each reason, then at most
    once per ``interval`` seconds per reason, with how many were dropped meanwhile.

    Counting costs a dict update; logging is off the hot path by construction.
    """

    def __init__(
        self, log: Any, interval: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._log = log
        self._interval = interval
        self._clock = clock
        self.counts: dict[str, int] = {}
        self._last_logged: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def drop(
        self, reason: str, message: str, *, exc_info: BaseException | None = None, **context: Any
    ) -> None:
        """Count one drop for ``reason`` and log it if the rate limit allows (with the
        traceback of ``exc_info``, when given: a bug that a message found)."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
        now = self._clock()
        last = self._last_logged.get(reason)
        if last is None or now - last >= self._interval:
            self._last_logged[reason] = now
            self._log.warning(
                "message dropped",
                reason=reason,
                detail=message,
                dropped_since_last_log=self._unlogged[reason],
                dropped_total=self.counts[reason],
                exc_info=exc_info,
                **context,
            )
            self._unlogged[reason] = 0
