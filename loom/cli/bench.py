"""``loom bench``: run the benchmark suite (``bench/*.py`` of a checkout) with a progress
bar, then print each bench's tables."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from pathlib import Path
from typing import Any

BENCHES = (
    "pubsub",
    "tools",
    "durable",
    "reconnect",
    "sandbox",
    "mcp",
    "collab",
    "desktop",
    "dashboard",
    "context",
)
"""In the order they run; ``context`` is deterministic and takes no ``--runs``."""
_PROGRESS = re.compile(r"run (\d+)/(\d+) done")
_WIDTH = 30


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``loom bench`` to ``loom``'s parser."""
    bench = commands.add_parser(
        "bench",
        parents=[common],
        help="run the benchmarks (a checkout's bench/) and print their tables",
        epilog="examples:\n  loom bench                  # every bench, 5 runs each\n"
        "  loom bench tools sandbox --runs 3\n  loom bench context",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benches to run (default: all of {BENCHES})"
    )
    bench.add_argument("--runs", type=int, default=5, help="repetitions per bench (5)")
    bench.add_argument("--dir", type=Path, help="the bench directory (default: find bench/)")


def find_benches(explicit: Path | None) -> Path | None:
    """``explicit`` (only it), else ``./bench``, else the ``bench`` beside an editable
    install; ``None`` when there is none."""
    if explicit is not None:
        candidates = [explicit]
    else:
        candidates = [Path.cwd() / "bench", Path(__file__).resolve().parents[2] / "bench"]
    return next((c for c in candidates if (c / "pubsub.py").is_file()), None)


async def run_benches(args: argparse.Namespace) -> int:
    """Exit 1 if a bench failed, 2 if there are no benches here."""
    where = find_benches(args.dir)
    if where is None:
        print("loom bench: no bench/ directory here (the benches ship with a checkout)",
              file=sys.stderr)  # fmt: skip
        return 2
    unknown = sorted(set(args.names) - set(BENCHES))
    if unknown:
        print(f"loom bench: no such bench: {', '.join(unknown)}", file=sys.stderr)
        return 2
    names = args.names or list(BENCHES)
    tables: list[tuple[str, str]] = []
    failed: list[tuple[str, str]] = []
    for position, name in enumerate(names, 1):
        command = [sys.executable, str(where / f"{name}.py")]
        if name != "context":
            command += ["--runs", str(args.runs)]
        label = f"[{position}/{len(names)}] {name}"
        output, code = await _run(command, label, 1 if name == "context" else args.runs)
        (tables if code == 0 else failed).append((name, output))
    for name, output in tables:
        print(f"\n## {name}\n{output.strip()}")
    for name, output in failed:
        print(f"\nloom bench: {name} failed:\n{output.strip()[-2000:]}", file=sys.stderr)
    return 1 if failed else 0


async def _run(command: list[str], label: str, runs: int) -> tuple[str, int]:
    """Run one bench, drawing its progress from the ``run i/n done`` lines it prints."""
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    started = time.monotonic()
    output = asyncio.ensure_future(process.stdout.read())
    errors: list[str] = []
    _draw(label, 0, runs, started)
    while line := (await process.stderr.readline()).decode(errors="replace"):
        errors.append(line)
        if found := _PROGRESS.search(line):
            _draw(label, int(found.group(1)), int(found.group(2)), started)
    code = await process.wait()
    _draw(label, runs if code == 0 else 0, runs, started, end=True)
    text = (await output).decode(errors="replace")
    return (text if code == 0 else text + "".join(errors)), code


def _draw(label: str, done: int, total: int, started: float, *, end: bool = False) -> None:
    filled = _WIDTH * done // max(total, 1)
    bar = "#" * filled + "." * (_WIDTH - filled)
    line = f"\r{label:<24} [{bar}] {done}/{total} runs  {time.monotonic() - started:5.0f} s"
    print(line, end="\n" if end else "", file=sys.stderr, flush=True)
