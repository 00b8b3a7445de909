"""Timers: ``desktop.timer.<name>`` every N seconds or on a cron expression (``cronsim``),
with a policy for runs missed while Loom was stopped or the host asleep.

The last run of each timer is written to a state file before its event goes out, so a
restart never fires a run twice, and runs that came due while nothing ran are found on
the next start. The wall clock is read at least every few seconds: after a suspend (the
monotonic clock stops, the wall clock does not) overdue runs are noticed within
``_NAP`` seconds of waking.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from loom.desktop._settings import TimerSettings, TimersSettings, zone
from loom.desktop._source import Choice, Publish, Refused, module
from loom.logs import get_logger

__all__ = ["Schedule", "Timers", "choose_timers"]

_NAP = 5.0
"""Seconds the timer loop sleeps at most before it reads the wall clock again."""
_MAX_ALL = 100
"""Missed runs ``missed = "all"`` fires at most (the latest ones)."""
_MAX_COUNT = 100_000
"""Missed cron runs counted at most (a cron timer stopped for years)."""

log = get_logger("loom.desktop")


class Schedule:
    """One timer's schedule: the runs due after a given time."""

    def __init__(self, settings: TimerSettings) -> None:
        self.settings = settings
        self.zone = zone(settings.tz)
        self._cronsim = module("cronsim") if settings.cron is not None else None

    @property
    def spec(self) -> str:
        """What the schedule is, as kept with its last run (a change starts it afresh)."""
        s = self.settings
        if s.every is not None:
            return f"every {s.every:g} s"
        return f"cron {s.cron}" + (f" in {s.tz}" if s.tz else "")

    def next_after(self, last: float) -> float:
        """The first run strictly after ``last`` (epoch seconds)."""
        every = self.settings.every
        if every is not None:
            return last + every
        assert self._cronsim is not None
        start = datetime.fromtimestamp(last, self.zone)
        return float(next(self._cronsim.CronSim(self.settings.cron, start)).timestamp())

    def due(self, last: float, now: float) -> tuple[int, list[float]]:
        """Runs in ``(last, now]``: how many, and the latest ``_MAX_ALL`` of them."""
        every = self.settings.every
        if every is not None:
            count = max(0, math.floor((now - last) / every))
            first = max(1, count - _MAX_ALL + 1)
            return count, [last + k * every for k in range(first, count + 1)]
        assert self._cronsim is not None
        runs = self._cronsim.CronSim(self.settings.cron, datetime.fromtimestamp(last, self.zone))
        latest: deque[float] = deque(maxlen=_MAX_ALL)
        count = 0
        for run in runs:
            at = run.timestamp()
            if at > now or count >= _MAX_COUNT:
                break
            latest.append(at)
            count += 1
        return count, list(latest)


class Timers:
    """The timers source: every timer's schedule, its last run kept in ``state``."""

    backend = "cronsim"

    def __init__(
        self,
        settings: TimersSettings,
        timers: dict[str, TimerSettings],
        state: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.path = settings.state or state
        self.clock = clock
        self.schedules = {name: Schedule(t) for name, t in timers.items()}
        self.last: dict[str, float] = {}
        self.fired: dict[str, int] = dict.fromkeys(self.schedules, 0)
        self._publish: Publish | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def load(self) -> None:
        """Read the last runs; a timer new or changed starts from now."""
        kept: dict[str, Any] = {}
        try:
            kept = json.loads(self.path.read_text()).get("timers", {})
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("timer state unreadable: starting afresh", error=str(exc))
        now = self.clock()
        for name, schedule in self.schedules.items():
            entry = kept.get(name)
            if (
                isinstance(entry, dict)
                and entry.get("spec") == schedule.spec
                and isinstance(entry.get("last"), int | float)
                and math.isfinite(entry["last"])
            ):
                self.last[name] = float(entry["last"])
            else:
                self.last[name] = now
        self.save()

    def save(self) -> None:
        """Write the last runs: to a new file, synced, then renamed over the old."""
        timers = {n: {"spec": s.spec, "last": self.last[n]} for n, s in self.schedules.items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = self.path.with_name(self.path.name + ".new")
        with open(new, "w") as out:
            json.dump({"version": 1, "timers": timers}, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(new, self.path)

    def tick(self) -> list[tuple[str, dict[str, Any]]]:
        """The events due now, by the missed-run policy; their runs saved as done."""
        now = self.clock()
        events: list[tuple[str, dict[str, Any]]] = []
        moved = False
        for name, schedule in self.schedules.items():
            last = self.last[name]
            count, runs = schedule.due(last, now)
            if not count:
                continue
            settings = schedule.settings
            latest = runs[-1]
            on_time = now - latest <= settings.grace
            if count == 1 and on_time:
                fire = [(latest, 0)]
            elif settings.missed == "once":
                fire = [(latest, count - 1)]
            elif settings.missed == "skip":
                fire = [(latest, count - 1)] if on_time else []
            else:  # all
                fire = [(at, 0) for at in runs]
                if count > len(runs):
                    fire[0] = (runs[0], count - len(runs))
            if not on_time or count > 1:
                log.info("timer runs missed", timer=name, missed=count, policy=settings.missed)
            self.last[name] = latest
            moved = True
            for at, skipped in fire:
                body = {
                    **settings.data,
                    "name": name,
                    "scheduled": at,
                    "scheduled_iso": datetime.fromtimestamp(at, schedule.zone).isoformat(),
                    "fired": now,
                    "late": round(max(0.0, now - at), 3),
                    "skipped": skipped,
                    "missed": not (count == 1 and on_time),
                }
                events.append((f"desktop.timer.{name}", body))
                self.fired[name] += 1
        if moved:  # before the events go out: a crash now loses a run, never repeats one
            self.save()
        return events

    def next_run(self) -> float:
        """The wall-clock time of the soonest run."""
        return min(s.next_after(self.last[n]) for n, s in self.schedules.items())

    async def start(self, publish: Publish) -> None:
        await asyncio.to_thread(self.load)
        self._publish = publish
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                events = self.tick()
            except OSError as exc:  # the state file cannot be written: fire nothing
                log.error("timer state not saved: timers wait", error=str(exc))
                events = []
            for topic, body in events:
                if self._publish is not None:
                    self._publish(topic, body)
            wait = min(max(self.next_run() - self.clock(), 0.0), _NAP)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait + 0.001):
                    await self._wake.wait()

    async def stop(self) -> None:
        self._publish = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def status(self) -> dict[str, Any]:
        return {
            name: {
                "schedule": s.spec,
                "last": self.last.get(name),
                "next": s.next_after(self.last[name]) if name in self.last else None,
                "fired": self.fired[name],
            }
            for name, s in self.schedules.items()
        }


def choose_timers(
    settings: TimersSettings, timers: dict[str, TimerSettings], state: Path
) -> tuple[Timers | None, list[Choice]]:
    """The timers source, unless it is off or has no timers."""
    if not settings.enabled:
        return None, [Choice("timers", "-", "switched off ([desktop.timers] enabled)")]
    if not timers:
        return None, [Choice("timers", "-", "no timers configured ([desktop.timer.NAME])")]
    try:
        return Timers(settings, timers, state), [Choice("timers", "cronsim", chosen=True)]
    except (Refused, ValueError) as exc:
        return None, [Choice("timers", "cronsim", str(exc))]
