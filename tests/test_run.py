"""`loom run`: a supervised mesh from a TOML file; `loom actor`."""

from __future__ import annotations

import asyncio
import json
import os
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


def run_worker_and_echo(
    spawn: Callable[..., Proc], tmp: Path
) -> tuple[Proc, str, dict[str, dict[str, int | None]]]:
    """`loom run` of a broker, worker w1 and actor echo, once all are up: the run, the
    endpoint, and what the directory says."""
    config = run_file(
        tmp,
        f'[[worker]]\nname = "w1"\ntarget = "{SAMPLE_TOOLS}"\n'
        f'[[actor]]\nname = "echo"\ntarget = "{ACTORS}/echo.py:Echo"\n',
    )
    endpoint = f"ipc://{tmp}/mesh"
    run = spawn(*LOOM, "run", str(config))
    mesh = wait_for(
        lambda: (d := directory(endpoint))["actors"].get("echo") and d["workers"] and d,
        timeout=20,
    )
    return run, endpoint, mesh


@pytest.mark.timeout(90)
def test_run_restarts_a_killed_child_and_stops_in_reverse_order(
    spawn: Callable[..., Proc], short_tmp: Path
) -> None:
    """SIGKILL an actor: it is restarted (new pid, restarts 1) and works; SIGTERM stops
    actors, then workers, then the broker, and exits 0 leaving no process."""
    run, endpoint, mesh = run_worker_and_echo(spawn, short_tmp)
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


@pytest.mark.timeout(90)
def test_a_killed_supervisor_takes_its_children_with_it(
    spawn: Callable[..., Proc], short_tmp: Path
) -> None:
    """SIGKILL `loom run` itself: its broker, worker and actor (each in a session of its
    own) are told by the kernel and stop, rather than run on as orphans."""
    run, _, _ = run_worker_and_echo(spawn, short_tmp)
    children = psutil.Process(run.pid).children()
    assert len(children) == 3
    os.kill(run.pid, signal.SIGKILL)
    run.popen.wait(10)

    def gone() -> bool:
        return not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]

    wait_for(gone, timeout=30)


def test_run_gives_up_on_a_crash_loop_and_fails(
    spawn: Callable[..., Proc], short_tmp: Path
) -> None:
    """A child that keeps crashing is given up on after max_restarts within the window;
    everything stops and `loom run` exits 1."""
    crash = short_tmp / "crash.py"
    crash.write_text(
        "from loom import Actor\n"
        "class Crashy(Actor):\n"
        "    def __init__(self, *args, **kwargs):\n"
        "        raise RuntimeError('crashes on start')\n"
    )
    config = run_file(
        short_tmp, f'[[actor]]\nname = "crashy"\ntarget = "{crash}:Crashy"\n', max_restarts=2
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


def test_run_checks_every_target_before_starting_anything(short_tmp: Path) -> None:
    """A run file whose targets are wrong exits 2 naming each problem; no broker, no
    child is started."""
    config = run_file(
        short_tmp,
        f'[[worker]]\nname = "w1"\ntarget = "{short_tmp}/missing.py"\n'
        f'[[actor]]\nname = "echo"\ntarget = "{ACTORS}/echo.py:NoSuchActor"\n',
    )
    result = subprocess.run(
        [*LOOM, "run", str(config)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2, result.stderr
    assert "nothing started" in result.stderr
    assert "worker w1:" in result.stderr and "missing.py" in result.stderr
    assert "actor echo:" in result.stderr and "NoSuchActor" in result.stderr
    assert "broker started" not in result.stderr
    assert not (short_tmp / "mesh").exists()


@pytest.mark.timeout(120)
def test_ps_shows_the_children_and_restart_restarts_one(
    spawn: Callable[..., Proc], short_tmp: Path
) -> None:
    """`loom ps` lists a running `loom run`'s children; `loom restart NAME` restarts that
    child at once (new pid, restarts 1, not a crash); an unknown name fails naming the
    children; a second `loom run` of the same file is refused; once it stops, `loom ps`
    exits 1."""
    runtime = short_tmp / "runtime"
    runtime.mkdir()
    env = {"XDG_RUNTIME_DIR": str(runtime)}

    def loom(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*LOOM, *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={**os.environ, **env},
        )

    config = run_file(
        short_tmp,
        f'[[worker]]\nname = "w1"\ntarget = "{SAMPLE_TOOLS}"\n'
        f'[[actor]]\nname = "echo"\ntarget = "{ACTORS}/echo.py:Echo"\n',
    )
    endpoint = f"ipc://{short_tmp}/mesh"
    run = spawn(*LOOM, "run", str(config), env=env)
    first = wait_for(lambda: directory(endpoint)["actors"].get("echo"), timeout=20)

    def children() -> dict[str, dict[str, object]]:
        ps = loom("ps", str(config), "--json")
        assert ps.returncode == 0, ps.stderr
        [answer] = json.loads(ps.stdout)
        assert answer["file"] == str(config.resolve())
        return {child["name"]: child for child in answer["children"]}

    listed = children()
    assert set(listed) == {"broker", "w1", "echo"}
    assert listed["echo"]["pid"] == first and listed["echo"]["state"] == "running"
    table = loom("ps")
    assert table.returncode == 0 and "echo" in table.stdout and str(first) in table.stdout

    again = loom("run", str(config))
    assert again.returncode == 2 and "running already" in again.stderr

    unknown = loom("restart", "nope")
    assert unknown.returncode == 1 and "echo" in unknown.stderr and "w1" in unknown.stderr

    restarted = loom("restart", "echo")
    assert restarted.returncode == 0, restarted.stderr
    second = wait_for(
        lambda: (pid := directory(endpoint)["actors"].get("echo")) not in (None, first) and pid,
        timeout=20,
    )
    now = wait_for(lambda: (c := children()["echo"])["state"] == "running" and c)
    assert now["pid"] == second and now["restarts"] == 1
    assert "child restarted on request" in run.output and "child exited" not in run.output
    assert run.stop(signal.SIGTERM, timeout=30) == 0, run.output
    gone = loom("ps", str(config))
    assert gone.returncode == 1 and "no loom run" in gone.stderr


def test_broker_flags_reproduce_the_run_files_broker_settings(short_tmp: Path) -> None:
    """What `loom run` passes to its broker child parses back to the same settings,
    repeatable ones (require_approval) included."""
    from loom.broker import BrokerSettings
    from loom.cli.broker import build_parser, settings_from
    from loom.cli.run import broker_flags

    wanted = BrokerSettings(
        endpoint=f"ipc://{short_tmp}/mesh",
        require_approval=("files.*", "shell.run"),
        data_dir=str(short_tmp / "data"),
        heartbeat=0.5,
    )
    parsed, _, _ = settings_from(build_parser().parse_args(broker_flags(wanted)))
    assert parsed == wanted
