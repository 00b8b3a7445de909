"""``loom demo``: a broker and the demo actors as child processes, with a live feed."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys

from loom.actor import Actor, Event
from loom.errors import BrokerUnavailableError
from loom.keys import dashboard_token
from loom.logs import get_logger
from loom.session import broker_answers, wait_for_broker

ROLES = ("worker", "analyst", "trader", "ticker")


def stop_children(children: list[subprocess.Popen[bytes]], grace: float = 5.0) -> None:
    """SIGTERM the children in reverse start order, then kill any still alive after ``grace``."""
    for child in reversed(children):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
        try:
            child.wait(grace)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


async def run_demo(address: str, duration: float, dashboard_port: int = 0) -> int:
    """Run the demo until ``duration`` seconds pass (0: forever) or SIGINT/SIGTERM, with
    ``loom dashboard`` on ``dashboard_port`` (0: none; a port in use costs only the
    dashboard, which says so)."""
    log = get_logger("loom.demo")
    if await broker_answers(address):
        log.error("a broker already answers at this address; pass --broker ADDR", broker=address)
        return 1
    python = sys.executable
    children = [subprocess.Popen([python, "-m", "loom.cli.broker", "--endpoint", address])]
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    feed = Actor(name="demo-feed", broker=address)
    try:
        broker = children[0]
        await wait_for_broker(address, 10.0, exited=lambda: broker.poll() is not None)
        await feed.subscribe("**", _show)
        await feed.start()
        for role in ROLES:
            children.append(
                subprocess.Popen([python, "-m", "loom.demo", role, "--broker", address])
            )
        watch = {}
        if dashboard_port:
            dashboard = [python, "-m", "loom.cli.main", "dashboard", "--broker", address]
            children.append(subprocess.Popen([*dashboard, "--port", str(dashboard_port)]))
            watch["dashboard"] = f"http://127.0.0.1:{dashboard_port}/?token={dashboard_token()}"
        log.info(
            "demo running",
            broker=address,
            children=list(ROLES),
            **watch,
            hint=f"in another terminal: loom tap 'market.**' --broker {address}",
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=duration or None)
    except BrokerUnavailableError as exc:
        log.error("demo cannot start", error=str(exc))
        return 1
    finally:
        await feed.stop()
        await asyncio.to_thread(stop_children, children)
    log.info("demo stopped")
    return 0


def _show(event: Event) -> None:
    print(f"{event.topic:<22} {event.sender:<8} {event.data}", flush=True)
