"""The `loom` command line against a real broker: pub, tap, stats, worker, list, call, demo."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import (
    LOOM,
    Proc,
    free_tcp_endpoint,
    run_loom,
    spawn_actor,
    start_worker,
    until,
    wait_for,
)

from loom.keys import dashboard_token

ROOT = Path(__file__).parent.parent


def test_pub_reaches_tap(broker: str, spawn: Callable[..., Proc]) -> None:
    """`loom tap` prints `topic sender data` for each matching `loom pub`."""
    tap = spawn(*LOOM, "tap", "alerts.*", "--count", "2", "--broker", broker)
    tap.wait_line("listening on")
    assert run_loom("pub", "other.topic", "1", "--broker", broker).returncode == 0
    assert run_loom("pub", "alerts.disk", '{"free_gb": 3}', "--broker", broker).returncode == 0
    assert run_loom("pub", "alerts.cpu", '"hot"', "--broker", broker).returncode == 0
    assert tap.popen.wait(10) == 0
    events = [line for line in tap.lines if line.startswith("alerts.")]
    assert events == ['alerts.disk loom-pub {"free_gb": 3}', 'alerts.cpu loom-pub "hot"']


def test_tap_json_carries_header_fields(broker: str, spawn: Callable[..., Proc]) -> None:
    """`loom tap --json` prints one JSON object per event with its header fields."""
    tap = spawn(*LOOM, "tap", "--json", "--count", "1", "--broker", broker)
    tap.wait_line("listening on")
    assert run_loom("pub", "a.b", "[1, 2]", "--broker", broker).returncode == 0
    assert tap.popen.wait(10) == 0
    record = json.loads(next(line for line in tap.lines if line.startswith("{")))
    assert record["topic"] == "a.b" and record["data"] == [1, 2]
    assert record["sender"] == "loom-pub" and record["kind"] == "event"
    assert len(record["id"]) == 32 and record["trace_id"] == record["id"] and record["hops"] == 0


def test_broker_from_environment(spawn: Callable[..., Proc]) -> None:
    """Without --broker the CLI uses $LOOM_BROKER."""
    endpoint = free_tcp_endpoint()
    env = {"LOOM_BROKER": endpoint}
    spawn(sys.executable, "-m", "loom.cli.broker", env=env).wait_line("broker ready")
    result = subprocess.run(
        [*LOOM, "stats"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr
    assert "totals" in json.loads(result.stdout)


def test_stats_prints_counters(broker: str) -> None:
    """`loom stats` prints the broker's per-topic counters as JSON."""
    assert run_loom("pub", "s.t", "1", "--broker", broker).returncode == 0
    stats = wait_for(
        lambda: (
            (s := json.loads(run_loom("stats", "--broker", broker).stdout))["topics"].get("s.t")
            and s
        )
    )
    assert stats["topics"]["s.t"]["forwarded"] == 1


def test_stats_watch_shows_per_topic_rates(broker: str) -> None:
    """`loom stats --watch` prints a table of per-topic rates per refresh, busiest first,
    while a publisher runs (here bounded by --count)."""
    import asyncio
    import threading

    from loom import Actor

    done = threading.Event()

    def publish() -> None:
        async def go() -> None:
            actor = Actor(name="pumper", broker=broker)
            await actor.start()
            try:
                while not done.is_set():
                    for _ in range(20):
                        await actor.emit("busy.topic", 1)
                    done.wait(0.01)  # pace the publisher (a short blocking wait on its loop)
            finally:
                await actor.stop()

        asyncio.run(go())

    pumper = threading.Thread(target=publish)
    pumper.start()
    try:
        shown = run_loom("stats", "--watch", "0.5", "--count", "2", "--broker", broker)
    finally:
        done.set()
        pumper.join(20)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("TOPIC"))
    assert "PUB/S" in lines[header] and lines[header + 1].startswith("busy.topic")
    rate = float(lines[header + 1].split()[1].replace(",", ""))
    assert rate > 50
    assert run_loom("stats", "--watch", "0", "--broker", broker).returncode == 2


def test_bad_input_and_missing_broker_fail_clearly(broker: str, short_tmp: Path) -> None:
    """Bad JSON exits 2; no broker exits 1 with a message; a bad topic exits 1 saying why."""
    bad = run_loom("pub", "a.b", "{not json", "--broker", f"ipc://{short_tmp}/none")
    assert bad.returncode == 2 and "not JSON" in bad.stderr
    missing = run_loom("pub", "a.b", "1", "--broker", f"ipc://{short_tmp}/none", "--timeout", "0.5")
    assert missing.returncode == 1 and "no broker answered" in missing.stderr
    invalid = run_loom("pub", "a..b", "1", "--broker", broker)
    assert invalid.returncode == 1 and "empty or wildcard token" in invalid.stderr


def test_call_prints_results_and_fails_with_the_code(mesh: str, spawn: Callable[..., Proc]) -> None:
    """`loom call` prints the JSON result; a failure exits 1 naming the code."""
    start_worker(spawn, mesh, "w1")
    ok = run_loom("call", "sample.add", '{"a": 1, "b": 2}', "--broker", mesh)
    assert (ok.returncode, ok.stdout) == (0, "3\n"), ok.stderr
    unknown = run_loom("call", "sample.nope", "--broker", mesh)
    assert unknown.returncode == 1 and "UNKNOWN_TOOL: no worker serves" in unknown.stderr
    invalid = run_loom("call", "sample.add", '{"a": "x"}', "--broker", mesh)
    assert invalid.returncode == 1
    assert "INVALID_PARAMS: invalid arguments for sample.add: a: Input" in invalid.stderr
    crawl = run_loom(
        "call", "sample.crawl", '{"steps": 2, "interval": 0.1}', "--progress", "--broker", mesh
    )
    assert crawl.stdout == "2\n" and 'progress: {"step": 2}' in crawl.stderr
    assert run_loom("call", "sample.add", "[1]", "--broker", mesh).returncode == 2


def test_list_shows_actors_workers_and_tools(mesh: str, spawn: Callable[..., Proc]) -> None:
    """`loom list` prints the live actors, workers and tools; `--json` the directory."""
    start_worker(spawn, mesh, "w1")
    spawn_actor(spawn, "echo", mesh)
    listing = run_loom("list", "--broker", mesh)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert any(line.split()[:1] == ["echo"] and "ping.*" in line for line in lines), lines
    assert any(line.startswith("w1 ") and "sample.add" in line for line in lines), lines
    assert any(line.startswith("sample.add ") and "Add two integers." in line for line in lines)
    directory = json.loads(run_loom("list", "--json", "--broker", mesh).stdout)
    assert {t["name"] for t in directory["tools"]} >= {"sample.add", "sample.crawl"}
    add = next(t for t in directory["tools"] if t["name"] == "sample.add")
    assert add["schema"]["required"] == ["a"] and add["workers"] == ["w1"]


@pytest.mark.parametrize("how", ["duration", "sigint"])
@pytest.mark.timeout(90)
def test_demo_runs_and_leaves_no_process(
    spawn: Callable[..., Proc], short_tmp: Path, how: str
) -> None:
    """`loom demo` runs a broker, actors and a tool worker that talk (a trade decision
    needs the demo.risk tool) and a dashboard that shows them; it stops them all and
    exits 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [*LOOM, "demo", "--broker", f"ipc://{short_tmp}/demo", "--dashboard-port", str(port)]
    demo = spawn(*args, "--duration", "8") if how == "duration" else spawn(*args)
    parent = psutil.Process(demo.pid)
    children = wait_for(lambda: len(c := parent.children(recursive=True)) >= 6 and c, timeout=20)
    demo.wait_line("trade.decision", timeout=20)
    demo.wait_line("market.price.BTC")

    def drawn() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            token = {"token": dashboard_token()}  # the page is the home's user's alone
            state = httpx.get(f"http://127.0.0.1:{port}/api/state", params=token, timeout=2).json()
            names = {p["name"] for p in state["topology"]["peers"]}
            return {"analyst", "trader", "ticker"} <= names and bool(state["calls"])
        return False

    wait_for(drawn, timeout=20, interval=0.1)
    if how == "sigint":
        demo.popen.send_signal(signal.SIGINT)
    assert demo.popen.wait(30) == 0, demo.output
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, child
    assert "demo stopped" in demo.output and "broker stopped" in demo.output


def test_demo_refuses_an_address_in_use(broker: str) -> None:
    """`loom demo` on an address where a broker already answers exits 1 and says so."""
    result = run_loom("demo", "--broker", broker, "--duration", "1")
    assert result.returncode == 1
    assert "already answers" in result.stderr


@pytest.mark.parametrize("script", ["loom", "loom-broker"])
def test_console_scripts_are_installed(script: str) -> None:
    """The package installs both console scripts, and they answer --help."""
    path = Path(sys.executable).parent / script
    result = subprocess.run([str(path), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "example" in result.stdout


def test_a_handlers_log_lines_carry_its_topic_and_trace(broker: str) -> None:
    """A line logged inside a handler names the event's topic and trace id (JSON logs)."""
    import asyncio
    import io

    from loom import Actor, Event
    from loom.logs import configure_logging

    lines = io.StringIO()
    configure_logging(json=True, stream=lines)
    seen: list[Event] = []

    async def go() -> None:
        actor = Actor(name="logger", broker=broker)

        async def handle(event: Event) -> None:
            actor.log.info("handling")
            seen.append(event)

        await actor.subscribe("logged.*", handle)
        await actor.start()
        try:
            await actor.emit("logged.one", 1)
            await until(lambda: seen)
        finally:
            await actor.stop()

    try:
        asyncio.run(go())
    finally:
        configure_logging()
    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    handled = next(r for r in records if r["event"] == "handling")
    assert handled["topic"] == "logged.one" and handled["trace"] == seen[0].trace_id
    started = next(r for r in records if r["event"] == "actor started")
    assert "trace" not in started


def test_loom_bench_runs_a_bench_and_prints_its_table(tmp_path: Path) -> None:
    """`loom bench context` runs the (deterministic) context bench with a progress bar
    on stderr and prints its table; unknown names and a missing bench dir exit 2."""
    done = run_loom("bench", "context", "--dir", str(ROOT / "bench"), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "## context" in done.stdout and re.search(r"^all\s+[\d,]+\s+0\.\d\dx", done.stdout, re.M)
    assert "[1/1] context" in done.stderr and "1/1 runs" in done.stderr
    assert run_loom("bench", "nope").returncode == 2
    assert run_loom("bench", "context", "--dir", str(tmp_path)).returncode == 2


def test_every_command_has_examples_and_the_common_flags() -> None:
    """Each `loom` subcommand's --help shows an example and the common flags."""
    import argparse

    from loom.cli.main import build_parser

    [commands] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(commands.choices) >= 16
    for name, parser in commands.choices.items():
        assert parser.epilog and "loom" in parser.epilog, name
        verbs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for leaf in verbs[0].choices.values() if verbs else [parser]:  # `loom mcp attach`
            text = leaf.format_help()
            assert "--broker" in text and "--log-json" in text and "--timeout" in text, name


def test_stats_hides_the_plumbing_topics_unless_asked(broker: str) -> None:
    """`loom stats` leaves out `$inbox.*` and `$probe.*` (every actor's replies and link
    probes); `--all` shows them."""
    assert run_loom("pub", "seen.x", "1", "--broker", broker).returncode == 0
    shown = json.loads(run_loom("stats", "--broker", broker).stdout)["topics"]
    everything = json.loads(run_loom("stats", "--all", "--broker", broker).stdout)["topics"]
    assert "seen.x" in shown and not [t for t in shown if t.startswith(("$inbox", "$probe"))]
    assert [t for t in everything if t.startswith(("$inbox", "$probe"))]


def test_list_shows_durable_subscriptions(spawn: Callable[..., Proc], short_tmp: Path) -> None:
    """An actor's durable subscriptions appear in `loom list` with their patterns."""
    from conftest import start_broker

    endpoint = f"ipc://{short_tmp}/b"
    start_broker(spawn, endpoint, "--data-dir", str(short_tmp / "data"))
    env = {"LOOM_TEST_AUDIT_FILE": str(short_tmp / "audit.txt")}
    target = f"{ROOT / 'tests/actors/durable_sub.py'}:Auditor"
    spawn(*LOOM, "actor", target, "--broker", endpoint, env=env)
    wait_for(lambda: "durable:audit=orders.*" in run_loom("list", "--broker", endpoint).stdout)


def test_a_reader_that_stops_early_gets_no_traceback(broker: str) -> None:
    """`loom tap ... | head -1`: the command ends quietly when its reader goes."""
    for i in range(3):
        run_loom("pub", f"many.x{i}", str(i), "--broker", broker)
    shell = f"{sys.executable} -m loom.cli.main stats --all --broker {broker} | head -1"
    done = subprocess.run(
        ["bash", "-c", shell], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.strip() == "{" and "Traceback" not in done.stderr, done.stderr


def test_ask_fails_at_once_without_that_agent(broker: str) -> None:
    """`loom ask NAME` with no agent of that name exits 1 at once, saying so."""
    done = run_loom("ask", "nobody", "hello?", "--broker", broker, "--wait", "60", timeout=30)
    assert done.returncode == 1 and "no agent named 'nobody'" in done.stderr


def test_a_data_dir_of_none_is_refused(tmp_path: Path) -> None:
    """`--data-dir None` (a missing value written out, which once left a None/ directory
    in the repository) is refused, naming the key."""
    done = subprocess.run(
        [sys.executable, "-m", "loom.cli.broker", "--data-dir", "None"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 2 and "data_dir" in done.stderr
    assert not (tmp_path / "None").exists()
