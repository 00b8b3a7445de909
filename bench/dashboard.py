"""The dashboard: first paint and first data in headless Chromium, and the broker's cost.

    python bench/dashboard.py [--runs 5]

A `loom demo` mesh (broker, three actors trading, a tool worker) runs with `loom
dashboard` attached. Each run opens the page in a fresh Chromium page (Debian's
`chromium`, driven by Playwright) and measures first contentful paint and the time until
the mesh is drawn (the actors' nodes in the topology). Baseline: the same browser
painting a one-line static page served by a bare aiohttp server on the same machine.

The broker's cost: the round trip of each command the dashboard sends once per interval
(STATS, DIRECTORY, RECENT), against a HELLO round trip on the same broker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from playwright.sync_api import Page, sync_playwright

from loom.protocol import DIRECTORY, HELLO, RECENT, STATS, VERSION
from loom.session import ask, wait_for_broker

PY = sys.executable
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]


@contextlib.contextmanager
def mesh(directory: str) -> Iterator[tuple[str, str]]:
    """`loom demo` and `loom dashboard`; yields the broker address and the page URL."""
    broker = f"ipc://{directory}/broker"
    demo = subprocess.Popen(
        [PY, "-m", "loom.cli.main", "demo", "--broker", broker, "--dashboard-port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    dashboard = subprocess.Popen(
        [PY, "-m", "loom.cli.main", "dashboard", "--broker", broker, "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        asyncio.run(wait_for_broker(broker, timeout=30))
        assert dashboard.stderr is not None
        url = ""
        for line in dashboard.stderr:
            if found := re.search(r"loom dashboard: (http://\S+/\S*)", line):
                url = found.group(1)
                break
        if not url:
            raise RuntimeError("loom dashboard did not start")
        yield broker, url
    finally:
        for proc in (dashboard, demo):
            proc.terminate()
            proc.wait(20)


@contextlib.contextmanager
def static_page() -> Iterator[str]:
    """A bare aiohttp server with a one-line page, in a thread: the baseline."""
    started: dict[str, Any] = {}
    ready = threading.Event()

    async def serve() -> None:
        async def page(request: web.Request) -> web.Response:
            return web.Response(text="<!doctype html><p>Loom</p>", content_type="text/html")

        app = web.Application()
        app.add_routes([web.get("/", page)])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        started["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}/"
        started["stop"] = asyncio.Event()
        started["loop"] = asyncio.get_running_loop()
        ready.set()
        await started["stop"].wait()
        await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield started["url"]
    finally:
        started["loop"].call_soon_threadsafe(started["stop"].set)
        thread.join(10)


def paint(page: Page) -> float:
    found = page.evaluate(
        "performance.getEntriesByName('first-contentful-paint').map(e => e.startTime)"
    )
    return float(found[0]) if found else float("nan")


def measure_page(browser: Any, url: str, selector: str | None) -> tuple[float, float]:
    """(first contentful paint, time until ``selector`` is visible), ms from navigation."""
    page = browser.new_page()
    try:
        started = time.perf_counter()
        page.goto(url)
        drawn = float("nan")
        if selector is not None:
            page.wait_for_selector(selector, timeout=20_000)
            drawn = (time.perf_counter() - started) * 1000
        page.wait_for_function(
            "performance.getEntriesByName('first-contentful-paint').length > 0", timeout=20_000
        )
        return paint(page), drawn
    finally:
        page.close()


async def round_trips(broker: str, count: int = 50) -> dict[str, float]:
    """Median ms per command the dashboard sends, and HELLO's."""
    bodies: dict[bytes, dict[str, Any]] = {
        HELLO: {"version": VERSION, "name": "bench"},
        STATS: {},
        DIRECTORY: {},
        RECENT: {"calls_after": -1, "limit": 1000},
    }
    medians = {}
    for command, body in bodies.items():
        times = []
        for _ in range(count):
            started = time.perf_counter()
            await ask(broker, command, body)
            times.append((time.perf_counter() - started) * 1000)
        medians[command.decode()] = statistics.median(times)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    executable = shutil.which("chromium")
    if executable is None:
        sys.exit("bench/dashboard.py needs Chromium: scripts/install-test-packages")
    fcp, drawn, base = [], [], []
    trips: list[dict[str, float]] = []
    with (
        tempfile.TemporaryDirectory(prefix="loom-", dir="/tmp") as directory,
        mesh(directory) as (broker, url),
        static_page() as baseline,
    ):
        with sync_playwright() as playwright:  # its own event loop: no asyncio.run inside
            browser = playwright.chromium.launch(executable_path=executable, args=FLAGS)
            measure_page(browser, url, '[data-node="peer:trader"]')  # warm the browser up
            for run in range(args.runs):
                painted, shown = measure_page(browser, url, '[data-node="peer:trader"]')
                fcp.append(painted)
                drawn.append(shown)
                base.append(measure_page(browser, baseline, None)[0])
                print(f"page {run + 1}/{args.runs} measured", file=sys.stderr, flush=True)
            browser.close()
        for run in range(args.runs):
            trips.append(asyncio.run(round_trips(broker)))
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)
    paint_ms, base_ms = statistics.median(fcp), statistics.median(base)
    print(f"\nDashboard page, headless Chromium, medians of {args.runs} runs")
    print("| measure | dashboard ms | baseline ms (static page) | ratio |")
    print("|---|---|---|---|")
    print(
        f"| first contentful paint | {paint_ms:.0f} | {base_ms:.0f} | {paint_ms / base_ms:.2f}x |"
    )
    print(f"| mesh drawn (actors in the topology) | {statistics.median(drawn):.0f} | - | - |")
    print("\nBroker work per dashboard poll (round trip from a client, median ms)")
    print("| command | ms | vs HELLO |")
    print("|---|---|---|")
    hello = statistics.median(t["HELLO"] for t in trips)
    for command in ("HELLO", "STATS", "DIRECTORY", "RECENT"):
        value = statistics.median(t[command] for t in trips)
        print(f"| {command} | {value:.2f} | {value / hello:.2f}x |")


if __name__ == "__main__":
    main()
