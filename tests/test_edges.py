"""The rough edges a new user hits first: addresses, where logs go, who is who."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Proc, run_loom, spawn_actor, start_broker, wait_for

from loom import Actor, Event
from loom.errors import DuplicateNameError

BAD = ["127.0.0.1:7700", "tcp://127.0.0.1", "tcp://:7700", "udp://h:1", "ipc://"]


@pytest.mark.parametrize("bad", BAD)
def test_a_bad_address_fails_at_once_naming_the_forms(bad: str) -> None:
    """`--broker` without a scheme (or host, or port) fails at once, not after a timeout
    (it used to hang for good), with a message naming it and the accepted forms."""
    started = time.monotonic()
    done = run_loom("list", "--broker", bad, timeout=20)
    assert done.returncode == 1
    assert repr(bad) in done.stderr and "tcp://HOST:PORT" in done.stderr
    assert time.monotonic() - started < 10


def test_a_bad_address_fails_actor_run_and_loom_broker(tmp_path: Path) -> None:
    """Actor.run() raises EndpointError (a LoomError) at once; loom-broker exits 2."""
    script = tmp_path / "a.py"
    script.write_text("from loom import Actor\nActor(name='a', broker='127.0.0.1:7700').run()\n")
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=20, check=False
    )
    assert done.returncode == 1 and "EndpointError" in done.stderr
    broker = subprocess.run(
        [sys.executable, "-m", "loom.cli.broker", "--endpoint", "127.0.0.1:7700"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert broker.returncode == 2 and "tcp://HOST:PORT" in broker.stderr


def test_no_broker_says_so_and_how_to_start_one() -> None:
    """Nobody at the address: the message says so and names loom-broker."""
    done = run_loom("list", "--broker", "tcp://127.0.0.1:9", "--timeout", "0.5")
    assert done.returncode == 1 and "loom-broker" in done.stderr


def test_the_library_writes_nothing_a_host_did_not_ask_for(broker: str, tmp_path: Path) -> None:
    """An actor used from a script that configures no logging writes nothing, to
    standard output or standard error (a `| jq` pipeline stays clean)."""
    script = tmp_path / "quiet.py"
    script.write_text(
        textwrap.dedent(f"""
        import asyncio
        from loom import Actor

        async def main():
            actor = Actor(name="quiet", broker={broker!r})
            await actor.start()
            await actor.emit("quiet.x", 1)
            actor.log.warning("a warning nobody asked to see")
            await actor.stop()
            print('{{"ok": true}}')

        asyncio.run(main())
        """)
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout == '{"ok": true}\n'
    assert done.stderr == ""


def test_a_host_routes_and_silences_loom_logs(broker: str) -> None:
    """Loom logs through the stdlib `loom.*` loggers: a host's handler gets the records
    (with the event's fields), and a level on `loom` silences them."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    loom_logger = logging.getLogger("loom")
    loom_logger.addHandler(handler)
    loom_logger.setLevel(logging.INFO)

    async def cycle(name: str) -> None:
        actor = Actor(name=name, broker=broker)
        await actor.start()
        await actor.stop()

    try:
        asyncio.run(cycle("routed"))
        routed = [r for r in records if r.name == "loom.actor"]
        assert any(dict(r.msg).get("event") == "actor started" for r in routed)  # type: ignore[call-overload]
        records.clear()
        loom_logger.setLevel(logging.ERROR)
        asyncio.run(cycle("silenced"))
        assert records == []
    finally:
        loom_logger.removeHandler(handler)
        loom_logger.setLevel(logging.NOTSET)


def test_programs_log_to_standard_error(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    """loom-broker and an Actor.run() script write their logs to standard error:
    standard output stays the user's."""
    endpoint = f"ipc://{tmp_path}/b"
    broker = subprocess.Popen(
        [sys.executable, "-m", "loom.cli.broker", "--endpoint", endpoint],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        script = tmp_path / "run.py"
        script.write_text(
            f"from loom import Actor\nprint('mine')\nActor(name='r', broker={endpoint!r}).run()\n"
        )
        actor = subprocess.Popen(
            [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        wait_for(lambda: run_loom("list", "--broker", endpoint).stdout.count("\nr ") == 1)
        actor.terminate()
        out, err = actor.communicate(timeout=20)
        assert out == "mine\n" and "actor started" in err and "actor stopped" in err
    finally:
        broker.terminate()
        out, err = broker.communicate(timeout=20)
    assert out == "" and "broker ready" in err and "broker stopped" in err


def test_presence_events_name_the_incarnation_and_names_are_unique(
    spawn: Callable[..., Proc], short_tmp: Path
) -> None:
    """A second live actor with a name is refused (DuplicateNameError); a restarted one
    (its first run killed) joins once the first is forgotten. $sys events carry each
    run's incarnation, in order: joined(first), left(first), joined(second)."""
    endpoint = f"ipc://{short_tmp}/b"
    start_broker(spawn, endpoint, "--heartbeat", "0.2")
    seen: list[Event] = []

    async def watch_and_clash() -> None:
        watcher = Actor(name="watcher", broker=endpoint)
        await watcher.subscribe("$sys.actor.*", seen.append)
        await watcher.start()
        try:
            first = await asyncio.to_thread(spawn_actor, spawn, "echo", endpoint, "solo")
            clash = Actor(name="solo", broker=endpoint, connect_timeout=1.0)
            with pytest.raises(DuplicateNameError):
                await clash.start()
            first.kill()
            await asyncio.to_thread(spawn_actor, spawn, "echo", endpoint, "solo")
            deadline = time.monotonic() + 10
            while len([e for e in seen if e.data["name"] == "solo"]) < 3:
                assert time.monotonic() < deadline, seen
                await asyncio.sleep(0.02)
        finally:
            await watcher.stop()

    asyncio.run(watch_and_clash())
    solo = [(e.topic, e.data["incarnation"]) for e in seen if e.data["name"] == "solo"]
    (joined1, first), (left1, first_again), (joined2, second) = solo[:3]
    assert (joined1, left1, joined2) == (
        "$sys.actor.joined",
        "$sys.actor.left",
        "$sys.actor.joined",
    )
    assert first == first_again and first != second and len(first) == 16


def test_actors_that_say_so_share_a_name(broker: str) -> None:
    """`unique=False` on both lets actors share a name (what `loom tap` does)."""

    async def body() -> None:
        one = Actor(name="tap", broker=broker, unique=False)
        two = Actor(name="tap", broker=broker, unique=False)
        await one.start()
        await two.start()
        await two.stop()
        await one.stop()

    asyncio.run(body())
