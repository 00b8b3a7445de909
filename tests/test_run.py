"""`loom run`: a supervised mesh from a TOML file; `loom actor`."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from conftest import ACTORS, LOOM, SAMPLE_TOOLS, Proc, wait_for

from loom import Actor
from loom.tools import ToolClient


def run_file(tmp: Path, body: str, **supervisor: object) -> Path:
    settings = {"backoff": 0.1, "status_every": 0, "grace": 5, **supervisor}
    lines = [
        "[broker]",
        f'endpoint = "ipc://{tmp}/mesh"',
        "heartbeat = 0.2",
        "[supervisor]",
        *(f"{key} = {json.dumps(value)}" for key, value in settings.items()),
        body,
    ]
    path = tmp / "mesh.toml"
    path.write_text("\n".join(lines))
    return path


def directory(endpoint: str) -> dict[str, dict[str, int | None]]:
    """name -> pid of the actors and workers the broker knows now."""

    async def ask() -> dict[str, dict[str, int | None]]:
        async with await ToolClient.connect(endpoint, name="test") as client:
            found = await client.directory()
        return {
            "actors": {a.name: a.pid for a in found.actors},
            "workers": {w.name: w.pid for w in found.workers},
        }

    return asyncio.run(ask())


@pytest.mark.timeout(90)
def test_run_restarts_a_killed_child_and_stops_in_reverse_order(
    spawn: Callable[..., Proc], short_tmp: Path
) -> None:
    """SIGKILL an actor: it is restarted (new pid, restarts 1) and works; SIGTERM stops
    actors, then workers, then the broker, and exits 0 leaving no process."""
    config = run_file(
        short_tmp,
        f'[[worker]]\nname = "w1"\ntarget = "{SAMPLE_TOOLS}"\n'
        f'[[actor]]\nname = "echo"\ntarget = "{ACTORS}/echo.py:Echo"\n',
    )
    endpoint = f"ipc://{short_tmp}/mesh"
    run = spawn(*LOOM, "run", str(config))
    mesh = wait_for(
        lambda: (d := directory(endpoint))["actors"].get("echo") and d["workers"] and d,
        timeout=20,
    )
    assert set(mesh["workers"]) == {"w1"}
    first = mesh["actors"]["echo"]
    psutil.Process(first).kill()
    second = wait_for(
        lambda: (pid := directory(endpoint)["actors"].get("echo")) not in (None, first) and pid
    )
    children = psutil.Process(run.pid).children()
    assert second in {c.pid for c in children}
    restarted = ["echo", "actor", "running", str(second), "1"]
    wait_for(lambda: any(line.split()[:5] == restarted for line in run.lines))
    call = subprocess.run(
        [*LOOM, "call", "sample.add", '{"a": 2}', "--broker", endpoint],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert call.stdout == "3\n", call.stderr
    assert run.stop(signal.SIGTERM, timeout=30) == 0, run.output
    out = run.output
    assert out.index("actor stopped") < out.index("worker stopped") < out.index("broker stopped")
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def test_run_gives_up_on_a_crash_loop_and_fails(
    spawn: Callable[..., Proc], short_tmp: Path
) -> None:
    """A child that keeps crashing is given up on after max_restarts within the window;
    everything stops and `loom run` exits 1."""
    crash = short_tmp / "crash.py"
    crash.write_text("raise RuntimeError('crashes on import')\n")
    config = run_file(
        short_tmp, f'[[actor]]\nname = "crashy"\ntarget = "{crash}:Nope"\n', max_restarts=2
    )
    run = spawn(*LOOM, "run", str(config))
    assert run.popen.wait(60) == 1, run.output
    run.wait_line("giving up on a child")
    assert "3 restarts within 60s" in run.output
    assert run.output.count("child started                  child=crashy") == 3
    assert "broker stopped" in run.output


def test_run_names_the_bad_key(short_tmp: Path) -> None:
    """An invalid run file exits 2 naming the file and the key."""
    config = run_file(
        short_tmp, '[[actor]]\nname = "a"\ntarget = "x.py:A"\nrestart = "sometimes"\n'
    )
    result = subprocess.run(
        [*LOOM, "run", str(config)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert f"{config}: actor.0.restart: Input should be 'always'" in result.stderr


@pytest.mark.timeout(90)
def test_a_restarted_actor_resumes_its_durable_subscription(
    spawn: Callable[..., Proc], short_tmp: Path
) -> None:
    """SIGKILL a durable subscriber under `loom run`: it is restarted and gets every event
    published meanwhile (at least once: the few handled just before the kill may repeat)."""
    audit = short_tmp / "audit.txt"
    config = run_file(
        short_tmp,
        f'[[actor]]\nname = "auditor"\ntarget = "{ACTORS}/durable_sub.py:Auditor"\n'
        f'env = {{ LOOM_TEST_AUDIT_FILE = "{audit}" }}\n',
    )
    text = config.read_text().replace(
        "heartbeat = 0.2", f'heartbeat = 0.2\ndata_dir = "{short_tmp}/data"'
    )
    config.write_text(text)
    endpoint = f"ipc://{short_tmp}/mesh"
    run = spawn(*LOOM, "run", str(config))
    first = wait_for(lambda: directory(endpoint)["actors"].get("auditor"), timeout=20)

    def handled() -> set[int]:
        return {int(line) for line in audit.read_text().split()} if audit.exists() else set()

    async def publish(numbers: range) -> None:
        publisher = Actor(name="publisher", broker=endpoint)
        await publisher.start()
        for i in numbers:
            await publisher.emit(f"orders.{i % 2}", i, qos="reliable")
        await publisher.stop()

    asyncio.run(publish(range(100)))
    wait_for(lambda: handled() == set(range(100)))
    psutil.Process(first).kill()
    asyncio.run(publish(range(100, 200)))
    wait_for(lambda: handled() == set(range(200)), timeout=30)
    assert directory(endpoint)["actors"]["auditor"] != first
    assert run.stop(signal.SIGTERM, timeout=30) == 0
