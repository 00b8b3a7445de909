"""Helpers for the dashboard tests: a `loom dashboard` process and its state."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any

import httpx
from conftest import Proc


def start_dashboard(spawn: Callable[..., Proc], broker: str, *extra: str) -> tuple[Proc, str]:
    """`loom dashboard` on a free port, polling every 0.2 s; returns it and its URL."""
    proc = spawn(
        sys.executable, "-m", "loom.cli.main", "dashboard", "--broker", broker,
        "--port", "0", "--interval", "0.2", *extra,
    )  # fmt: skip
    line = proc.wait_line("loom dashboard: http")
    match = re.search(r"(http://\S+/\?token=\S+)", line)
    assert match is not None, line
    return proc, match.group(1)


def at(url: str, path: str) -> str:
    """``path`` on the dashboard whose printed URL (with its token) is ``url``."""
    base, _, query = url.partition("?")
    return f"{base}{path}?{query}" if query else base + path


def state(url: str) -> dict[str, Any]:
    return httpx.get(at(url, "api/state"), timeout=5).json()  # type: ignore[no-any-return]


def node_ids(current: dict[str, Any]) -> set[str]:
    topology = current["topology"]
    return {n["id"] for kind in ("peers", "topics", "tools", "workers") for n in topology[kind]}


def edges(current: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(e["from"], e["kind"], e["to"]) for e in current["topology"]["edges"]}
