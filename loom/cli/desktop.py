"""``loom desktop``: the desktop's sources and tools on the mesh; ``loom desktop check``:
which backend each source would use here, and why the others were refused."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from loom.config import read_settings, validated
from loom.desktop import Desktop, DesktopSettings, check


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``desktop`` and ``desktop check`` to ``loom``'s parser."""
    desktop = commands.add_parser(
        "desktop",
        parents=[common],
        help="hotkeys, clipboard, folders and timers as topics; clipboard and notify tools",
        epilog="examples:\n"
        "  loom desktop --config configs/desktop.toml   # its [desktop] table\n"
        "  loom desktop check                           # the backends this host offers\n"
        "see docs/desktop.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    desktop.add_argument(
        "action", nargs="?", choices=["run", "check"], default="run", help="run (default), check"
    )
    desktop.add_argument("--config", type=Path, help="a TOML file with a [desktop] table")
    desktop.add_argument("--name", help="the worker's and actor's name (default: desktop)")
    desktop.add_argument("--json", action="store_true", help="check: as JSON")


def load_desktop(path: Path | None, name: str | None = None) -> DesktopSettings:
    """The ``[desktop]`` table of ``path`` (defaults without one); watched folders and the
    state file are taken relative to the file.

    Raises:
        ConfigError: the file or the table is invalid.
    """
    table: dict[str, Any] = {}
    if path is not None:
        table = dict(read_settings(path).get("desktop", {}))
    if name:
        table["name"] = name
    settings = validated(DesktopSettings, table, path or Path("[desktop]"), "desktop.")
    if path is None:
        return settings
    base = path.resolve().parent
    watch = {
        key: w.model_copy(update={"path": base / w.path.expanduser()})
        for key, w in settings.files.watch.items()
    }
    files = settings.files.model_copy(update={"watch": watch})
    state = settings.timers.state
    timers = settings.timers
    if state is not None:
        timers = timers.model_copy(update={"state": base / state.expanduser()})
    return settings.model_copy(update={"files": files, "timers": timers})


def run_desktop(args: argparse.Namespace, broker: str) -> int:
    settings = load_desktop(args.config, args.name)
    if args.action == "check":
        choices = check(settings)
        if args.json:
            rows = [
                {"source": c.source, "backend": c.backend, "chosen": c.chosen, "why": c.refused}
                for c in choices
            ]
            print(json.dumps(rows, indent=2))
            return 0
        width = max(len(c.source) for c in choices)
        for choice in choices:
            mark = "uses" if choice.chosen else "  no" if choice.refused else "  ok"
            why = "" if choice.refused is None else f": {choice.refused}"
            print(f"{choice.source:<{width}}  {mark}  {choice.backend}{why}")
        return 0
    Desktop(settings, broker=broker).run()
    return 0
