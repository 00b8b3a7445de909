"""Logging: library code logs through the stdlib ``loom.*`` loggers (structlog on top, for
key-value events), writes nothing unless a program configures it, and programs (the CLI,
``loom-broker``, ``Actor.run``) configure it once, to standard error.

The library adds one ``NullHandler`` to its own ``loom`` logger, as libraries should, and
touches no global configuration (structlog's included: every logger is wrapped with its
own processors). A host application routes or silences Loom's lines like any library's:
``logging.getLogger("loom").setLevel(logging.ERROR)``. Records carry the event as a
structlog dict; ``configure_logging`` renders them (console or JSON lines) with
structlog's ``ProcessorFormatter``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, MutableMapping
from contextvars import ContextVar
from typing import Any, TextIO

import structlog

__all__ = [
    "DropCounter",
    "configure_logging",
    "get_logger",
    "handled_event",
    "logging_configured",
]

logging.getLogger("loom").addHandler(logging.NullHandler())  # quiet until configured

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


_PROCESSORS: list[Any] = [
    structlog.stdlib.filter_by_level,  # a disabled level costs one isEnabledFor
    _handled_event,
    structlog.stdlib.add_log_level,
    structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
]


def get_logger(name: str, **context: Any) -> Any:
    """A structlog logger over the stdlib logger ``name`` (a ``loom.*`` name), bound to
    ``component=name`` and the given context. It writes nothing until a program
    configures logging (or the host application attaches its own handlers)."""
    logger = structlog.wrap_logger(
        logging.getLogger(name),
        processors=_PROCESSORS,
        wrapper_class=structlog.stdlib.BoundLogger,
        context_class=dict,
        cache_logger_on_first_use=True,
    )
    return logger.bind(component=name, **context)


class _LoomHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler ``configure_logging`` installs (and replaces when called again)."""


def configure_logging(
    *, json: bool = False, level: str = "info", stream: TextIO | None = None
) -> None:
    """Configure logging once, at a program's edge (CLI, ``loom-broker``, ``Actor.run``):
    Loom's lines at ``level`` and above, other libraries' at warning, to ``stream``.

    Args:
        json: one JSON object per line (for machines) instead of the console renderer.
        level: the minimum level name of Loom's lines (``debug``, ``info``, ``warning``...).
        stream: where lines go; standard error by default (standard output is the
            user's).
    """
    renderer: Any
    if json:
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    formatter = structlog.stdlib.ProcessorFormatter(
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        foreign_pre_chain=[  # other libraries' records
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
        ],
    )
    handler = _LoomHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _LoomHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("loom").setLevel(logging.getLevelNamesMapping()[level.upper()])


def logging_configured() -> bool:
    """Whether the process has configured logging already (a host application, or a
    program): ``Actor.run`` configures it only when nobody did."""
    return bool(logging.getLogger().handlers)


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
