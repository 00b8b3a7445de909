"""Notifications: the ``desktop.notify`` tool, and what people do with them as
``desktop.notification.action`` and ``desktop.notification.closed`` events.

Backends, tried in this order by ``auto``:

- ``dbus``: the freedesktop Notifications service (``org.freedesktop.Notifications``) on
  the session bus, through ``jeepney`` (pure Python): every Linux and BSD desktop, and
  dunst or mako on their own. Actions work where the server says so (``actions`` in its
  capabilities).
- ``plyer``: macOS and Windows, through ``plyer`` (no actions there).
- ``memory`` (:class:`MemoryNotifier`): notifications kept in a list, for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import OrderedDict
from typing import Any

from loom.desktop._settings import NotifySettings
from loom.desktop._source import Choice, Publish, Refused, choose, module
from loom.logs import get_logger

__all__ = ["BACKENDS", "MemoryNotifier", "Notifier", "choose_notifier"]

BACKENDS = ("dbus", "plyer")
URGENCY = {"low": 0, "normal": 1, "critical": 2}
_CLOSED = {1: "expired", 2: "dismissed", 3: "closed", 4: "undefined"}
_PATH = "/org/freedesktop/Notifications"
_NAME = "org.freedesktop.Notifications"
_CALL_TIMEOUT = 5.0
_PLATFORM: str = sys.platform
"""Read once, as a plain string (so type checkers do not prune other platforms' code)."""

log = get_logger("loom.desktop")


class Notifier:
    """The notification backend: shows notifications and publishes what happens to the
    ones it showed (it remembers the last ``max_tracked``)."""

    backend = "none"
    actions = False
    """Whether the server shows actions (and reports the clicks)."""

    def __init__(self, settings: NotifySettings) -> None:
        self.settings = settings
        self._publish: Publish | None = None
        self._shown: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._offered: dict[int, frozenset[str]] = {}
        self.sent = 0
        self.clicked = 0
        self.refused = 0
        """Signals dropped: actions a notification did not offer, or not from its server."""

    async def start(self, publish: Publish) -> None:
        await self._open()
        self._publish = publish

    async def _open(self) -> None:
        pass

    async def stop(self) -> None:
        self._publish = None

    async def notify(
        self,
        title: str,
        *,
        body: str,
        urgency: str,
        actions: dict[str, str],
        timeout_ms: int,
        tag: str,
    ) -> int:
        """Show a notification; its id."""
        ident = await self._show(title, body, urgency, actions if self.actions else {}, timeout_ms)
        self.sent += 1
        if ident:
            self._shown[ident] = {"id": ident, "tag": tag, "title": title}
            self._offered[ident] = frozenset(actions if self.actions else ())
            while len(self._shown) > self.settings.max_tracked:
                old, _ = self._shown.popitem(last=False)
                self._offered.pop(old, None)
        return ident

    async def _show(
        self, title: str, body: str, urgency: str, actions: dict[str, str], timeout_ms: int
    ) -> int:
        raise NotImplementedError

    def action(self, ident: int, key: str) -> None:
        """The person chose ``key`` on notification ``ident``."""
        shown = self._shown.get(ident)
        if shown is None or self._publish is None:
            return  # another program's notification
        if key not in self._offered.get(ident, ()):
            self.refused += 1  # an action it never offered: not a person's choice
            return
        self.clicked += 1
        body = {**shown, "action": key, "backend": self.backend, "at": time.time()}
        self._publish("desktop.notification.action", body)

    def closed(self, ident: int, reason: int) -> None:
        """Notification ``ident`` went away."""
        shown = self._shown.pop(ident, None)
        self._offered.pop(ident, None)
        if shown is None or self._publish is None:
            return
        why = _CLOSED.get(reason, "undefined")
        body = {**shown, "reason": why, "backend": self.backend, "at": time.time()}
        self._publish("desktop.notification.closed", body)

    def status(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "clicked": self.clicked,
            "refused": self.refused,
            "actions": self.actions,
        }


class DbusNotifier(Notifier):
    """The freedesktop Notifications API over jeepney's asyncio router."""

    backend = "dbus"

    def __init__(self, settings: NotifySettings) -> None:
        super().__init__(settings)
        self.server, self.capabilities = self.probe()
        self.actions = "actions" in self.capabilities
        self._exit = contextlib.AsyncExitStack()
        self._router: Any = None
        self._bus: Any = None
        self._owner = ""
        self._listening: asyncio.Task[None] | None = None

    @staticmethod
    def probe() -> tuple[str, list[str]]:
        """The notification server's name and capabilities.

        Raises:
            Refused: no session bus, or nothing on it serves notifications.
        """
        if _PLATFORM in ("darwin", "win32"):
            raise Refused("no freedesktop session bus on this platform")
        jeepney = module("jeepney")
        blocking = module("jeepney.io.blocking")
        address = jeepney.DBusAddress(_PATH, bus_name=_NAME, interface=_NAME)
        try:
            with blocking.open_dbus_connection(bus="SESSION") as bus:
                info = bus.send_and_get_reply(
                    jeepney.new_method_call(address, "GetServerInformation"), timeout=2.0
                )
                if info.header.message_type == jeepney.MessageType.error:
                    raise Refused(f"no notification server on the session bus: {info.body}")
                caps = bus.send_and_get_reply(
                    jeepney.new_method_call(address, "GetCapabilities"), timeout=2.0
                )
        except Refused:
            raise
        except KeyError:
            raise Refused("no session bus ($DBUS_SESSION_BUS_ADDRESS is not set)") from None
        except Exception as exc:  # connection refused, timeout
            raise Refused(f"the session bus did not answer: {exc}") from None
        return str(info.body[0]), list(caps.body[0]) if caps.body else []

    async def _open(self) -> None:
        jeepney = module("jeepney")
        aio = module("jeepney.io.asyncio")
        self._address = jeepney.DBusAddress(_PATH, bus_name=_NAME, interface=_NAME)
        self._router = await self._exit.enter_async_context(aio.open_dbus_router(bus="SESSION"))
        rule = jeepney.MatchRule(type="signal", interface=_NAME, path=_PATH)
        self._bus = aio.Proxy(jeepney.message_bus, self._router)
        await self._bus.AddMatch(rule)
        queue = self._exit.enter_context(self._router.filter(rule, bufsize=1000))
        self._owner = await self._server()
        self._listening = asyncio.get_running_loop().create_task(self._listen(queue))

    async def _server(self) -> str:
        """The bus name of the program that serves notifications now (``""``: none)."""
        try:
            async with asyncio.timeout(_CALL_TIMEOUT):
                (owner,) = await self._bus.GetNameOwner(_NAME)
        except Exception:  # DBusErrorResponse: nobody owns it (now)
            return ""
        return str(owner)

    async def _listen(self, queue: asyncio.Queue[Any]) -> None:
        from jeepney import HeaderFields

        while True:
            message = await queue.get()
            sender = message.header.fields.get(HeaderFields.sender)
            if sender != self._owner:  # another program, or the server restarted
                self._owner = await self._server()
                if sender != self._owner:
                    self.refused += 1
                    continue
            member = message.header.fields.get(HeaderFields.member)
            body = message.body
            try:
                if member == "ActionInvoked" and len(body) == 2:
                    self.action(int(body[0]), str(body[1])[:200])
                elif member == "NotificationClosed" and len(body) == 2:
                    self.closed(int(body[0]), int(body[1]))
            except (TypeError, ValueError):  # another program's odd signal
                continue

    async def _show(
        self, title: str, body: str, urgency: str, actions: dict[str, str], timeout_ms: int
    ) -> int:
        jeepney = module("jeepney")
        flat = [part for pair in actions.items() for part in pair]
        hints = {"urgency": ("y", URGENCY[urgency])}
        call = jeepney.new_method_call(
            self._address,
            "Notify",
            "susssasa{sv}i",
            (self.settings.app_name, 0, "", title, body, flat, hints, timeout_ms),
        )
        async with asyncio.timeout(_CALL_TIMEOUT):
            reply = await self._router.send_and_get_reply(call)
        if reply.header.message_type == jeepney.MessageType.error:
            raise OSError(f"the notification server refused: {reply.body}")
        return int(reply.body[0])

    async def stop(self) -> None:
        await super().stop()
        if self._listening is not None:
            self._listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listening
        await self._exit.aclose()

    def status(self) -> dict[str, Any]:
        return super().status() | {"server": self.server}


class PlyerNotifier(Notifier):
    """plyer's notification facade (macOS, Windows), called on a thread."""

    backend = "plyer"

    def __init__(self, settings: NotifySettings) -> None:
        super().__init__(settings)
        if _PLATFORM not in ("darwin", "win32"):
            raise Refused("plyer is for macOS and Windows; here its notifications need dbus-python")
        self._plyer: Any = module("plyer", extra="")
        self._count = 0

    async def _show(
        self, title: str, body: str, urgency: str, actions: dict[str, str], timeout_ms: int
    ) -> int:
        seconds = 10 if timeout_ms < 0 else max(1, timeout_ms // 1000)
        await asyncio.to_thread(
            self._plyer.notification.notify,
            title=title,
            message=body,
            app_name=self.settings.app_name,
            timeout=seconds,
        )
        self._count += 1  # plyer gives no id: a count of our own
        return self._count


class MemoryNotifier(Notifier):
    """Notifications kept in ``shown`` (a list of dicts), with actions: for tests, and
    for hosts without a notification server. ``click(id, key)`` and ``dismiss(id)`` act
    as a person would."""

    backend = "memory"
    actions = True

    def __init__(self, settings: NotifySettings | None = None) -> None:
        super().__init__(settings or NotifySettings())
        self.shown: list[dict[str, Any]] = []

    async def _show(
        self, title: str, body: str, urgency: str, actions: dict[str, str], timeout_ms: int
    ) -> int:
        ident = len(self.shown) + 1
        self.shown.append(
            {"id": ident, "title": title, "body": body, "urgency": urgency, "actions": actions}
        )
        return ident

    def click(self, ident: int, key: str) -> None:
        self.action(ident, key)

    def dismiss(self, ident: int) -> None:
        self.closed(ident, 2)


def choose_notifier(
    settings: NotifySettings, *, every: bool = False
) -> tuple[Notifier | None, list[Choice]]:
    """The notification backend to use here, and what was tried."""
    if not settings.enabled:
        return None, [Choice("notify", "-", "switched off ([desktop.notify] enabled)")]
    wanted = BACKENDS if settings.backend == "auto" else (settings.backend,)
    makers = {"dbus": lambda: DbusNotifier(settings), "plyer": lambda: PlyerNotifier(settings)}
    return choose("notify", wanted, makers, every)
