"""The dashboard in real headless Chromium (Debian's `chromium`, driven by Playwright):
the page loads, shows the mesh and a tool call made during the test, and updates live
when a new actor joins. A screenshot is saved to `.artifacts/dashboard.png`."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import ROOT, Proc, loom_at, spawn_actor, start_worker
from dash import start_dashboard
from playwright.sync_api import Browser, Page, expect, sync_playwright

ARTIFACTS = Path(os.environ.get("LOOM_TEST_ARTIFACTS", ROOT / ".artifacts"))
FLAGS = [  # no sandbox as root; no calls home (this machine has no network)
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]


def chromium() -> str:
    found = os.environ.get("LOOM_CHROMIUM") or shutil.which("chromium")
    if not found:
        pytest.fail(
            "Chromium is needed for the dashboard's browser tests: scripts/check installs "
            "Debian's chromium (or set LOOM_CHROMIUM to a Chromium binary)"
        )
    return found


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium(), args=FLAGS)
        try:
            yield launched
        finally:
            launched.close()


def watch_errors(page: Page) -> list[str]:
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    return errors


@pytest.mark.timeout(120)
def test_the_page_shows_the_mesh_and_follows_it_live(
    mesh: str, spawn: Callable[..., Proc], browser: Browser
) -> None:
    """Loads, draws the actor, worker, tool, the tool calls made in the test (the failing
    one in red) and an event's thread, then a second actor appears without a reload."""
    start_worker(spawn, mesh, "w1")
    spawn_actor(spawn, "echo", mesh)
    _, url = start_dashboard(spawn, mesh)
    assert loom_at(mesh, "call", "sample.add", '{"a": 1, "b": 2}').returncode == 0
    assert loom_at(mesh, "call", "sample.boom", '{"message": "no"}').returncode == 1
    assert loom_at(mesh, "pub", "ping.browser", '{"n": 1}').returncode == 0

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = watch_errors(page)
    page.goto(url)
    expect(page.locator("#status")).to_have_attribute("data-status", "connected")
    expect(page.locator('[data-node="peer:echo"]')).to_be_visible()
    expect(page.locator('[data-node="worker:w1"]')).to_be_visible()
    expect(page.locator('[data-node="tool:sample.add"]')).to_be_visible()
    expect(page.locator('tr[data-call-row="sample.add"]').first).to_contain_text("ok")
    expect(page.locator('tr[data-call-row="sample.boom"].failed').first).to_contain_text(
        "TOOL_ERROR"
    )
    expect(page.locator('[data-tool="sample.boom"]')).to_contain_text("1 failed")
    expect(page.locator('[data-card="Tool calls"]')).to_contain_text("1 failed")
    # The ping's thread: the event, then the echo's pong, in one lane.
    expect(page.locator('.step[data-topic="pong.browser"]')).to_be_visible()
    expect(page.locator('[data-node="topic:ping.browser"]')).to_be_visible()
    paint = page.evaluate(
        "performance.getEntriesByName('first-contentful-paint').map(e => e.startTime)"
    )
    assert paint, "the page never painted"
    print(f"first contentful paint: {paint[0]:.0f} ms")  # measured in bench/dashboard.py

    page.evaluate("window.sameDocument = true")  # gone if the page reloads
    spawn_actor(spawn, "echo", mesh, "late-joiner")
    expect(page.locator('[data-node="peer:late-joiner"]')).to_be_visible(timeout=20_000)
    assert page.evaluate("window.sameDocument") is True
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert not errors, errors


@pytest.mark.timeout(120)
def test_names_from_the_mesh_are_shown_as_text_never_run(
    mesh: str, spawn: Callable[..., Proc], browser: Browser
) -> None:
    """A topic carrying HTML and script is drawn as its literal text."""
    _, url = start_dashboard(spawn, mesh)
    hostile = "x.<img src=nope onerror=window.pwned=1>"
    assert loom_at(mesh, "pub", hostile, "1").returncode == 0, "the topic was refused"
    page = browser.new_page()
    errors = watch_errors(page)
    page.goto(url)
    expect(page.locator(f'[data-node="topic:{hostile}"]')).to_contain_text("<img")
    assert page.evaluate("window.pwned") is None
    assert page.locator("img").count() == 0
    assert not errors, errors
