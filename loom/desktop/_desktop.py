"""``Desktop``: the sources (hotkeys, clipboard, files, timers) publishing on the mesh
through one actor, and the tools (clipboard, notifications, status) served by one
worker, in one process: ``loom desktop``."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import zmq

from loom.actor import Actor
from loom.config import broker_address
from loom.desktop._clipboard import Clipboard, choose_clipboard
from loom.desktop._files import Files, choose_files
from loom.desktop._hotkeys import Hotkeys, choose_hotkeys
from loom.desktop._notify import URGENCY, Notifier, choose_notifier
from loom.desktop._settings import DesktopSettings
from loom.desktop._source import Choice, Source
from loom.desktop._timers import Timers, choose_timers
from loom.errors import InvalidParamsError, ToolDeniedError, ToolFailedError
from loom.keys import loom_home
from loom.logs import configure_logging, get_logger, logging_configured
from loom.session import KeySpec, check_endpoint, serve_until_signalled
from loom.tools import SchemaTool, Tool, ToolContext, Worker

__all__ = ["Desktop", "check"]

_MAX_QUEUED = 10_000
"""Events waiting for the actor; more are dropped and counted (a stalled broker)."""
_MAX_TITLE = 1_000
_MAX_BODY = 20_000
_MAX_ACTIONS = 16

_OBJECT = {"type": "object", "additionalProperties": False}
_NOTIFY_SCHEMA = _OBJECT | {
    "properties": {
        "title": {"type": "string", "maxLength": _MAX_TITLE},
        "body": {"type": "string", "maxLength": _MAX_BODY, "default": ""},
        "urgency": {"enum": list(URGENCY), "default": "normal"},
        "actions": {
            "type": "object",
            "additionalProperties": {"type": "string", "maxLength": 200},
            "maxProperties": _MAX_ACTIONS,
            "description": "action key -> label; the key 'default' is a click on the"
            " notification itself. A choice comes back as desktop.notification.action",
            "default": {},
        },
        "timeout_ms": {
            "type": "integer",
            "minimum": -1,
            "description": "-1: the server's default, 0: until dismissed",
            "default": -1,
        },
        "tag": {
            "type": "string",
            "maxLength": 200,
            "description": "echoed in this notification's action and closed events",
            "default": "",
        },
    },
    "required": ["title"],
}
_SET_SCHEMA = _OBJECT | {"properties": {"text": {"type": "string"}}, "required": ["text"]}
_NONE_SCHEMA = _OBJECT | {"properties": {}}


def check(settings: DesktopSettings) -> list[Choice]:
    """Which backend each source would use here, and why the others were refused
    (``loom desktop check``). Nothing is started; X and dbus are asked what they offer."""
    made = (
        choose_hotkeys(settings.hotkeys, every=True),
        choose_clipboard(settings.clipboard, every=True),
        choose_files(settings.files),
        choose_timers(settings.timers, settings.timer, Path("/nonexistent")),
        choose_notifier(settings.notify, every=True),
    )
    return [choice for _, tried in made for choice in tried]


class Desktop:
    """The desktop's sources and tools on a mesh.

    Args:
        settings: what to run (``[desktop]``).
        broker: the broker's endpoint (``None``: ``$LOOM_BROKER``, else the default).
        key: the CURVE keys to present (as for ``Worker``).
        hotkeys, clipboard, notifier: a backend to use instead of the one the host offers
            (:class:`~loom.desktop.ScriptedKeys`, :class:`~loom.desktop.MemoryClipboard`,
            :class:`~loom.desktop.MemoryNotifier` for tests, or one of your own).
        state: the folder for the timers' state (default: ``desktop`` in the Loom home).
    """

    def __init__(
        self,
        settings: DesktopSettings | None = None,
        *,
        broker: str | None = None,
        key: KeySpec = None,
        context: zmq.Context[Any] | None = None,
        hotkeys: Hotkeys | None = None,
        clipboard: Clipboard | None = None,
        notifier: Notifier | None = None,
        state: Path | None = None,
    ) -> None:
        self.settings = settings = settings or DesktopSettings()
        self.log = get_logger("loom.desktop", desktop=settings.name)
        self.choices: list[Choice] = []
        state_file = (state or loom_home() / "desktop") / f"timers-{settings.name}.json"
        self.hotkeys = hotkeys or self._pick(choose_hotkeys(settings.hotkeys))
        self.clipboard = clipboard or self._pick(choose_clipboard(settings.clipboard))
        self.files: Files | None = self._pick(choose_files(settings.files))
        self.timers: Timers | None = self._pick(
            choose_timers(settings.timers, settings.timer, state_file)
        )
        self.notifier = notifier or self._pick(choose_notifier(settings.notify))
        for given, source in ((hotkeys, "hotkeys"), (clipboard, "clipboard"), (notifier, "notify")):
            if given is not None:
                self.choices.append(Choice(source, given.backend, chosen=True))
        self.problems: dict[str, str] = {}
        """Source -> why it did not start."""
        self.dropped = 0
        self.actor = Actor(name=settings.name, broker=broker, key=key, context=context)
        self.worker = Worker(
            self._tools(), broker=broker, name=settings.name, key=key, context=context
        )
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(_MAX_QUEUED)
        self._sender: asyncio.Task[None] | None = None
        self._running: list[Source] = []

    def _pick(self, made: tuple[Any, list[Choice]]) -> Any:
        source, tried = made
        self.choices += tried
        return source

    @property
    def sources(self) -> dict[str, Source]:
        """The sources that have a backend, by name."""
        found: dict[str, Source | None] = {
            "hotkeys": self.hotkeys,
            "clipboard": self.clipboard,
            "files": self.files,
            "timers": self.timers,
            "notify": self.notifier,
        }
        return {name: source for name, source in found.items() if source is not None}

    # --- lifecycle ---------------------------------------------------------------

    def run(self) -> None:
        """Start, serve until SIGINT or SIGTERM, stop. Blocks; for programs."""
        broker = check_endpoint(broker_address(self.worker.broker))
        self.worker.broker = self.actor.broker = broker
        if not logging_configured():
            configure_logging()
        asyncio.run(serve_until_signalled(self.start, self.stop))

    async def start(self) -> None:
        """Attach the actor and the worker, then start each source; a source that fails
        to start is logged and left off (``desktop.status`` says why).

        Raises:
            BrokerUnavailableError, AuthenticationError: as for ``Worker.start``.
        """
        await self.actor.start()
        await self.worker.start()
        self._sender = asyncio.get_running_loop().create_task(self._send())
        for name, source in self.sources.items():
            try:
                await source.start(self.publish)
            except Exception as exc:  # a Refused, or the backend's own error
                self.problems[name] = str(exc)[:500]
                self.log.error("desktop source not started", source=name, error=str(exc))
                with contextlib.suppress(Exception):  # let go of what it opened
                    await source.stop()
            else:
                self._running.append(source)
        running = {n: s.backend for n, s in self.sources.items() if s in self._running}
        self.log.info("desktop ready", **running)

    async def stop(self) -> None:
        """Let the tool calls in flight finish, stop the sources, send what they
        published, detach."""
        await self.worker.stop()
        for source in reversed(self._running):
            try:
                await source.stop()
            except Exception as exc:
                self.log.warning("desktop source did not stop cleanly", error=str(exc))
        self._running.clear()
        if self._sender is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await self._queue.join()
            self._sender.cancel()
        await self.actor.stop()

    # --- publishing --------------------------------------------------------------

    def publish(self, topic: str, body: dict[str, Any]) -> None:
        """Queue an event for the actor (in order); a full queue drops it, counted."""
        try:
            self._queue.put_nowait((topic, body))
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                self.log.warning("desktop events dropped", dropped=self.dropped, topic=topic)

    async def _send(self) -> None:
        while True:
            topic, body = await self._queue.get()
            try:
                await self.actor.emit(topic, body)
            except Exception as exc:  # too large, or the actor stopping
                self.dropped += 1
                self.log.warning("desktop event not sent", topic=topic, error=str(exc))
            finally:
                self._queue.task_done()

    # --- tools -------------------------------------------------------------------

    def _tools(self) -> list[Tool]:
        tools: list[Tool] = [
            SchemaTool(
                "desktop.status",
                self._status,
                _NONE_SCHEMA,
                description="Which desktop sources run, on which backends, and what went wrong.",
                idempotent=True,
                annotations={"readOnlyHint": True},
            )
        ]
        if self.clipboard is not None:
            tools.append(
                SchemaTool(
                    "desktop.clipboard.get",
                    self._clipboard_get,
                    _NONE_SCHEMA,
                    description="The clipboard's text.",
                    idempotent=True,
                    annotations={"readOnlyHint": True},
                    timeout=10.0,
                )
            )
            tools.append(
                SchemaTool(
                    "desktop.clipboard.set",
                    self._clipboard_set,
                    _SET_SCHEMA,
                    description="Put text on the clipboard.",
                    timeout=10.0,
                )
            )
        if self.notifier is not None:
            tools.append(
                SchemaTool(
                    "desktop.notify",
                    self._notify,
                    _NOTIFY_SCHEMA,
                    description="Show a desktop notification; returns its id. What the"
                    " person does with it comes back as desktop.notification.action and"
                    " desktop.notification.closed events.",
                    timeout=10.0,
                )
            )
        return tools

    async def _status(self, arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
        running = {id(s) for s in self._running}
        sources: dict[str, Any] = {}
        for name, source in self.sources.items():
            sources[name] = {
                "backend": source.backend,
                "running": id(source) in running,
                "problem": self.problems.get(name),
                **source.status(),
            }
        refused = [
            {"source": c.source, "backend": c.backend, "reason": c.refused}
            for c in self.choices
            if c.refused is not None and c.tried
        ]
        return {"sources": sources, "refused": refused, "dropped": self.dropped}

    def _running_source(self, name: str, source: Any) -> None:
        """Raises ToolFailedError when ``source`` did not start (its tools cannot work)."""
        if not any(running is source for running in self._running):
            why = self.problems.get(name, "stopped")
            raise ToolFailedError(f"the desktop's {name} source is not running: {why}")

    @staticmethod
    def _allow(context: ToolContext, allowed: list[str], what: str) -> None:
        if "*" in allowed or (context.caller is not None and context.caller in allowed):
            return
        raise ToolDeniedError(
            f"{context.caller or 'this caller'} may not {what} the clipboard"
            " (desktop.clipboard readers/writers)"
        )

    async def _clipboard_get(
        self, arguments: dict[str, Any], context: ToolContext
    ) -> dict[str, Any]:
        assert self.clipboard is not None
        self._allow(context, self.clipboard.settings.readers, "read")
        self._running_source("clipboard", self.clipboard)
        clip = await self.clipboard.read()
        return {"text": clip.text, "bytes": clip.size, "truncated": clip.truncated}

    async def _clipboard_set(
        self, arguments: dict[str, Any], context: ToolContext
    ) -> dict[str, Any]:
        assert self.clipboard is not None
        self._allow(context, self.clipboard.settings.writers, "write")
        self._running_source("clipboard", self.clipboard)
        text = arguments.get("text")
        if not isinstance(text, str):
            raise InvalidParamsError("text: a string is required")
        size = len(text.encode("utf-8", "replace"))
        if size > self.clipboard.settings.max_bytes:
            raise InvalidParamsError(f"text: {size} bytes, more than the clipboard's max_bytes")
        await self.clipboard.set(text)
        return {"bytes": size}

    async def _notify(self, arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
        assert self.notifier is not None
        self._running_source("notify", self.notifier)
        title = _text(arguments, "title", _MAX_TITLE, required=True)
        body = _text(arguments, "body", _MAX_BODY)
        tag = _text(arguments, "tag", 200)
        urgency = arguments.get("urgency", "normal")
        if urgency not in URGENCY:
            raise InvalidParamsError(f"urgency: one of {', '.join(URGENCY)}")
        actions = arguments.get("actions") or {}
        if (
            not isinstance(actions, dict)
            or len(actions) > _MAX_ACTIONS
            or not all(
                isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= 200 and len(v) <= 200
                for k, v in actions.items()
            )
        ):
            raise InvalidParamsError(f"actions: a map of at most {_MAX_ACTIONS} key -> label")
        timeout_ms = arguments.get("timeout_ms", -1)
        if not isinstance(timeout_ms, int) or isinstance(timeout_ms, bool) or timeout_ms < -1:
            raise InvalidParamsError("timeout_ms: an integer, -1 or more")
        ident = await self.notifier.notify(
            title,
            body=body,
            urgency=urgency,
            actions=actions,
            timeout_ms=min(timeout_ms, 2**31 - 1),
            tag=tag,
        )
        return {"id": ident, "actions": self.notifier.actions, "backend": self.notifier.backend}


def _text(arguments: dict[str, Any], name: str, limit: int, *, required: bool = False) -> str:
    value = arguments.get(name, "")
    if not isinstance(value, str) or len(value) > limit or (required and not value):
        need = "a non-empty string" if required else "a string"
        raise InvalidParamsError(f"{name}: {need} of at most {limit} characters")
    return value
