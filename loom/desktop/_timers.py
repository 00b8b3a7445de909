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
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeGuard

from loom.desktop._settings import TimerSettings, TimersSettings, zone
from loom.desktop._source import Choice, Publish, Refused, module
from loom.logs import get_logger

__all__ = ["Schedule", "Timers", "choose_timers"]

_NAP = 5.0
"""Seconds the timer loop sleeps at most before it reads the wall clock again."""
_MAX_ALL = 100
"""Missed runs ``missed = "all"`` fires at most (the latest ones)."""
_MAX_COUNT = 10_000
"""Missed cron runs counted at most (a cron timer stopped for years: "at least")."""
_SLACK = 60.0
"""Seconds a last run may lie in the future (clocks disagree a little); beyond it the
clock went back, or the state file lies, and the timer starts afresh."""

log = get_logger("loom.desktop")


def _plausible(last: Any, now: float) -> TypeGuard[float]:
    """A last run that can be: a number after 1970 and not after now."""
    return (
        isinstance(last, int | float)
        and not isinstance(last, bool)
        and math.isfinite(last)
        and 0 < last <= now + _SLACK
    )


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
        cron = self.settings.cron
        count = 0
        for run in self._cronsim.CronSim(cron, datetime.fromtimestamp(last, self.zone)):
            if run.timestamp() > now or count >= _MAX_COUNT:
                break
            count += 1
        latest: list[float] = []  # back from now, so a long outage costs no more
        after = datetime.fromtimestamp(now, self.zone)
        for run in self._cronsim.CronSim(cron, after, reverse=True):
            at = float(run.timestamp())
            if at <= last or len(latest) >= min(count, _MAX_ALL):
                break
            if at <= now:
                latest.append(at)
        return count, latest[::-1]


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
        """Read the last runs; a timer new, changed, or with a last run that cannot be
        (not a number, before 1970, in the future) starts from now."""
        kept: Any = {}
        try:
            kept = json.loads(self.path.read_text()).get("timers", {})
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("timer state unreadable: starting afresh", error=str(exc))
        if not isinstance(kept, dict):
            log.warning("timer state unreadable: starting afresh", error="not a table")
            kept = {}
        now = self.clock()
        for name, schedule in self.schedules.items():
            entry = kept.get(name)
            last = entry.get("last") if isinstance(entry, dict) else None
            if (
                isinstance(entry, dict)
                and entry.get("spec") == schedule.spec
                and _plausible(last, now)
            ):
                self.last[name] = float(last)
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
            if last > now + _SLACK:  # the clock went back: from now on, not from then
                log.warning("clock went back: timer starts afresh", timer=name)
                self.last[name] = now
                moved = True
                continue
            try:
                count, runs = schedule.due(last, now)
            except (ValueError, OverflowError, OSError) as exc:  # a time no calendar has
                log.error("timer skipped: starts afresh", timer=name, error=str(exc))
                self.last[name] = now
                moved = True
                continue
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
        """The wall-clock time of the soonest run (``_NAP`` from now if none can be
        told)."""
        runs = []
        for name, schedule in self.schedules.items():
            with contextlib.suppress(ValueError, OverflowError, OSError, StopIteration):
                runs.append(schedule.next_after(self.last[name]))
        return min(runs, default=self.clock() + _NAP)

    async def start(self, publish: Publish) -> None:
        await asyncio.to_thread(self.load)
        self._publish = publish
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                events = await asyncio.to_thread(self.tick)  # it syncs the state file
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
        timers = {}
        for name, schedule in self.schedules.items():
            last = self.last.get(name)
            upcoming = None
            if last is not None:
                with contextlib.suppress(ValueError, OverflowError, OSError, StopIteration):
                    upcoming = schedule.next_after(last)
            timers[name] = {
                "schedule": schedule.spec,
                "last": last,
                "next": upcoming,
                "fired": self.fired[name],
            }
        return {"timers": timers}


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
