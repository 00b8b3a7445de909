"""Timers: intervals and cron expressions (cronsim), the missed-run policies after a stop
or a suspend (driven by an injected clock), and a real `loom desktop` firing on schedule
and not twice across a restart."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import Proc, free_tcp_endpoint
from desktop_helpers import start_desktop, watching

from loom import Actor
from loom.desktop import DesktopSettings, Schedule, Timers, TimerSettings, TimersSettings

pytestmark = pytest.mark.timeout(60)

PARIS = ZoneInfo("Europe/Paris")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=PARIS).timestamp()


def _timers(tmp_path: Path, clock: Clock, **timers: dict[str, Any]) -> Timers:
    made = {name: TimerSettings(**table) for name, table in timers.items()}
    return Timers(TimersSettings(), made, tmp_path / "timers.json", clock=clock)


def test_an_interval_fires_each_period_on_time(tmp_path: Path) -> None:
    clock = Clock(1000.0)
    timers = _timers(tmp_path, clock, tick={"every": 10})
    timers.load()
    clock.now = 1009.9
    assert timers.tick() == []
    clock.now = 1010.5
    ((topic, body),) = timers.tick()
    assert topic == "desktop.timer.tick"
    assert body | {"scheduled": 1010.0, "late": 0.5, "skipped": 0, "missed": False} == body
    assert timers.tick() == []  # not twice
    assert timers.next_run() == 1020.0


def test_cron_runs_in_its_time_zone(tmp_path: Path) -> None:
    clock = Clock(_at("2026-12-04T17:59:00"))  # a Friday
    cron = {"cron": "0 18 * * mon-fri", "tz": "Europe/Paris"}
    timers = _timers(tmp_path, clock, evening=cron)
    timers.load()
    assert timers.next_run() == _at("2026-12-04T18:00:00")
    clock.now = _at("2026-12-04T18:00:02")
    ((_, body),) = timers.tick()
    assert body["scheduled_iso"] == "2026-12-04T18:00:00+01:00"
    assert timers.next_run() == _at("2026-12-07T18:00:00")  # Monday: the weekend skipped


@pytest.mark.parametrize(
    ("policy", "fired"),
    [("once", [(_at("2026-12-04T18:00:00"), 4)]), ("skip", []), ("all", "each")],
)
def test_runs_missed_while_stopped_follow_the_policy(
    tmp_path: Path, policy: str, fired: Any
) -> None:
    clock = Clock(_at("2026-11-30T12:00:00"))  # Monday noon
    table = {"cron": "0 18 * * *", "tz": "Europe/Paris", "missed": policy, "grace": 60}
    timers = _timers(tmp_path, clock, evening=table)
    timers.load()
    clock.now = _at("2026-12-04T20:00:00")  # back on Friday evening: 5 runs missed
    ticked = [(b["scheduled"], b["skipped"], b["missed"]) for _, b in timers.tick()]
    if fired == "each":
        days = ["11-30", "12-01", "12-02", "12-03", "12-04"]
        assert ticked == [(_at(f"2026-{day}T18:00:00"), 0, True) for day in days]
    else:
        assert ticked == [(at, skipped, True) for at, skipped in fired]
    assert timers.tick() == []
    assert timers.last["evening"] == _at("2026-12-04T18:00:00")


def test_a_run_late_within_grace_is_on_time_and_skip_keeps_it(tmp_path: Path) -> None:
    clock = Clock(0.0)
    timers = _timers(tmp_path, clock, t={"every": 100, "missed": "skip", "grace": 5})
    timers.load()
    clock.now = 304.0  # three runs due; the last is 4 s late: it fires, two are skipped
    ((_, body),) = timers.tick()
    assert (body["scheduled"], body["skipped"], body["missed"]) == (300.0, 2, True)
    clock.now = 410.0  # 10 s late, beyond grace: skipped
    assert timers.tick() == []
    assert timers.last["t"] == 400.0


def test_all_fires_at_most_a_hundred_and_counts_the_rest(tmp_path: Path) -> None:
    clock = Clock(0.0)
    timers = _timers(tmp_path, clock, t={"every": 1, "missed": "all"})
    timers.load()
    clock.now = 1000.5
    fired = timers.tick()
    assert len(fired) == 100
    assert fired[0][1]["skipped"] == 900
    assert [b["scheduled"] for _, b in fired] == [float(n) for n in range(901, 1001)]


def test_the_last_run_is_kept_so_a_restart_neither_repeats_nor_forgets(
    tmp_path: Path,
) -> None:
    clock = Clock(0.0)
    first = _timers(tmp_path, clock, t={"every": 10})
    first.load()
    clock.now = 10.1
    assert len(first.tick()) == 1
    saved = json.loads((tmp_path / "timers.json").read_text())
    assert saved["timers"]["t"] == {"spec": "every 10 s", "last": 10.0}

    again = _timers(tmp_path, clock, t={"every": 10})  # a restart, at once
    again.load()
    assert again.tick() == []
    clock.now = 40.5  # stopped across runs 20 and 30: one late event (missed = once)
    ((_, body),) = again.tick()
    assert (body["scheduled"], body["skipped"]) == (40.0, 2)

    changed = _timers(tmp_path, clock, t={"every": 7})  # a new schedule starts afresh
    changed.load()
    assert changed.last["t"] == 40.5


@pytest.mark.parametrize(
    "kept",
    [
        "{not json",
        '{"timers": []}',
        '{"timers": {"t": {"spec": "every 10 s", "last": true}}}',
        '{"timers": {"t": {"spec": "every 10 s", "last": 1e300}}}',
        '{"timers": {"t": {"spec": "every 10 s", "last": -5}}}',
        '{"timers": {"t": {"spec": "every 10 s", "last": "soon"}}}',
        '{"timers": {"t": "junk"}}',
    ],
)
def test_a_state_file_that_cannot_be_right_starts_afresh(tmp_path: Path, kept: str) -> None:
    (tmp_path / "timers.json").write_text(kept)
    clock = Clock(50.0)
    timers = _timers(tmp_path, clock, t={"every": 10})
    timers.load()
    assert timers.last["t"] == 50.0
    clock.now = 60.5
    assert len(timers.tick()) == 1


def test_a_clock_gone_back_restarts_the_timer_from_now(tmp_path: Path) -> None:
    clock = Clock(10_000.0)
    timers = _timers(tmp_path, clock, t={"every": 10})
    timers.load()
    clock.now = 5_000.0  # an hour and more back
    assert timers.tick() == []
    assert timers.last["t"] == 5_000.0
    clock.now = 5_010.5
    assert len(timers.tick()) == 1


def test_a_cron_timer_stopped_for_years_fires_once_for_the_latest_run(tmp_path: Path) -> None:
    clock = Clock(_at("2020-01-01T00:00:30"))
    timers = _timers(tmp_path, clock, m={"cron": "* * * * *", "tz": "Europe/Paris"})
    timers.load()
    clock.now = _at("2026-12-04T18:00:30")
    ((_, body),) = timers.tick()
    assert body["scheduled"] == _at("2026-12-04T18:00:00")
    assert body["skipped"] >= 9_999  # counted up to 10,000: "at least"
    assert timers.tick() == []


def test_bad_timer_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="exactly one of every"):
        TimerSettings(every=5, cron="* * * * *")
    with pytest.raises(ValueError, match="cron '61 \\* \\* \\* \\*'"):
        TimerSettings(cron="61 * * * *")
    with pytest.raises(ValueError, match="five fields"):
        TimerSettings(cron="* * * * * *")
    with pytest.raises(ValueError, match=r"greater than or equal to 0\.1"):
        TimerSettings(every=1e-9)
    with pytest.raises(ValueError, match="time zone 'Mars/Olympus'"):
        TimerSettings(every=5, tz="Mars/Olympus")
    with pytest.raises(ValueError, match="timer 'bad name'"):
        DesktopSettings.model_validate({"timer": {"bad name": {"every": 5}}})
    assert Schedule(TimerSettings(every=2.5)).spec == "every 2.5 s"


@pytest.fixture
def endpoint() -> str:
    return free_tcp_endpoint()


def test_a_timer_fires_on_schedule_and_not_twice_across_a_restart(
    spawn: Callable[..., Proc], mesh: str, tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    config = f'[desktop.timers]\nstate = "{state}"\n[desktop.timer.beat]\nevery = 1\n'
    desktop = start_desktop(spawn, mesh, config, tmp_path)

    async def body(actor: Actor, events: Any) -> None:
        nonlocal desktop
        first = await events.wait("desktop.timer.beat", 2)
        assert first[1]["scheduled"] - first[0]["scheduled"] == pytest.approx(1.0)
        for beat in first:  # on schedule: fired within a fraction of a second
            assert beat["fired"] - beat["scheduled"] < 0.5
            assert beat["missed"] is False
        desktop.stop()
        stopped_at = time.time()
        desktop = start_desktop(spawn, mesh, config, tmp_path)
        later = await events.wait("desktop.timer.beat", 4, timeout=15)
        scheduled = [beat["scheduled"] for beat in later]
        assert len(set(scheduled)) == len(scheduled), scheduled  # no run fired twice
        assert scheduled == sorted(scheduled)
        resumed = later[len(first) :]
        # the first run after the restart: a late one (skipped counts the rest), or the
        # next on time; never one that had fired already
        assert resumed[0]["scheduled"] > first[-1]["scheduled"]
        assert resumed[0]["scheduled"] >= stopped_at - 1.0

    watching(mesh, "desktop.timer.*", body)
