"""``loom worker``, ``loom list``, ``loom call``: the tool plane from a terminal."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loom._tables import format_table
from loom.cli.settings import Settings, load_settings
from loom.errors import ToolError
from loom.protocol import FEDERATION_WORKER
from loom.tools import Directory, ToolClient, Worker, configure_tools, load_tools


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add the tool plane's subcommands to ``loom``'s parser."""
    worker = commands.add_parser(
        "worker",
        parents=[common],
        help="serve the @tool functions of a file or module",
        epilog="examples:\n  loom worker my_tools.py\n  loom worker loom.demo.tools:TOOLS",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    worker.add_argument("target", metavar="PATH_OR_MODULE[:attr]")
    worker.add_argument("--name", help="the worker's name in the directory")
    worker.add_argument(
        "--grace", type=float, default=10.0, help="seconds to finish calls on SIGTERM (10)"
    )
    worker.add_argument(
        "--jail",
        type=Path,
        help="working directory of sandboxed tools (default: [worker] jail, else a "
        "temporary one per run)",
    )
    worker.add_argument(
        "--config", help='a settings file: [worker] and [tools."NAME"] sandbox overrides'
    )
    worker.add_argument(
        "--sandbox-all",
        action="store_true",
        default=None,
        help="sandbox tools that declare no policy too (default policy)",
    )

    listing = commands.add_parser(
        "list",
        parents=[common],
        help="print the live actors, workers and tools",
        epilog="examples:\n  loom list --json\n  loom list --all   # and the tools other brokers"
        " serve",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listing.add_argument("--json", action="store_true", help="the directory as JSON")
    listing.add_argument(
        "--all",
        action="store_true",
        help="also the tools served by other brokers of the federation, and which serve them",
    )

    call = commands.add_parser(
        "call",
        parents=[common],
        help="call a tool and print its result as JSON",
        epilog="example: loom call demo.stats '{\"values\": [1, 2, 3]}'",
    )
    call.add_argument("tool")
    call.add_argument("args", nargs="?", default="{}", help="arguments as a JSON object")
    call.add_argument(
        "--call-timeout", type=float, default=None, help="the call's timeout (default: the tool's)"
    )
    call.add_argument("--progress", action="store_true", help="print progress reports to stderr")


def run_worker(args: argparse.Namespace, broker: str) -> int:
    settings = load_settings(args.config) if args.config else Settings()
    sandbox_all = settings.worker.sandbox_all if args.sandbox_all is None else True
    tools = configure_tools(load_tools(args.target), settings.tools, sandbox_all=sandbox_all)
    jail = args.jail or settings.worker.jail
    Worker(
        tools,
        broker=broker,
        name=args.name,
        grace=args.grace,
        connect_timeout=args.timeout,
        jail=jail.expanduser().resolve() if jail else None,
    ).run()
    return 0


async def list_mesh(args: argparse.Namespace, broker: str) -> int:
    async with await ToolClient.connect(broker, name="loom-list", timeout=args.timeout) as client:
        directory = await client.directory(args.timeout)
    if not args.all:  # this broker's own: no tool served only elsewhere
        tools = [t for t in directory.tools if any(w != FEDERATION_WORKER for w in t.workers)]
        directory = directory.model_copy(update={"tools": tools})
    if args.json:
        print(json.dumps(directory.model_dump(by_alias=True), indent=2))
    else:
        if directory.insecure:
            print(INSECURE.format(broker=broker))
        print(format_directory(directory, everywhere=args.all))
    return 0


INSECURE = (
    "WARNING: the broker at {broker} runs --insecure: no CURVE, no identities, no rights;"
    " anyone who reaches it may publish, read and call anything.\n"
)


async def call_tool(args: argparse.Namespace, broker: str) -> int:
    try:
        params = json.loads(args.args)
    except json.JSONDecodeError as exc:
        print(f"loom call: arguments are not JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(params, dict):
        print("loom call: arguments must be a JSON object", file=sys.stderr)
        return 2

    def progress(data: Any) -> None:
        print(f"progress: {json.dumps(data, default=repr)}", file=sys.stderr, flush=True)

    async with await ToolClient.connect(broker, name="loom-call", timeout=args.timeout) as client:
        try:
            result = await client.call(
                args.tool,
                params,
                timeout=args.call_timeout,
                on_progress=progress if args.progress else None,
            )
        except ToolError as exc:
            print(f"loom call: {exc.code}: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(result, default=repr, ensure_ascii=False))
    return 0


def format_directory(
    directory: Directory, now: float | None = None, *, everywhere: bool = False
) -> str:
    """The directory as three plain-text tables; ``everywhere``: the tools say where
    they are served (``here`` and the other brokers' names)."""
    now = time.time() if now is None else now
    actors = [
        (
            a.name,
            a.identity,
            str(a.pid or "-"),
            _patterns(a.patterns, a.durable),
            _ago(now - a.last_seen),
        )
        for a in directory.actors
    ]
    workers = [
        (
            w.name,
            str(w.pid or "-"),
            " ".join(w.tools),
            str(w.in_flight),
            "draining" if w.draining else "ready",
            _ago(now - w.last_seen),
        )
        for w in directory.workers
    ]
    tools = [
        (
            t.name,
            str(len(t.workers)),
            f"{t.in_flight}/{t.capacity}",
            str(t.queued),
            str(t.calls),
            str(t.errors),
            *([_served_at(t.workers, t.brokers)] if everywhere else []),
            (t.description.splitlines() or [""])[0][:60],
        )
        for t in directory.tools
    ]
    where = ("SERVED AT",) if everywhere else ()
    return "\n\n".join(
        (
            _table(("ACTOR", "IDENTITY", "PID", "PATTERNS", "SEEN"), actors),
            _table(("WORKER", "PID", "TOOLS", "IN FLIGHT", "STATE", "SEEN"), workers),
            _table(
                ("TOOL", "WORKERS", "BUSY", "QUEUED", "CALLS", "ERRORS", *where, "DESCRIPTION"),
                tools,
            ),
        )
    )


def _served_at(workers: list[str], brokers: list[str]) -> str:
    here = ["here"] if any(w != FEDERATION_WORKER for w in workers) else []
    return ",".join([*here, *brokers]) or "-"


def _patterns(live: list[str], durable: dict[str, list[str]]) -> str:
    """An actor's patterns, then each durable subscription's as ``NAME=PATTERN,...``."""
    shown = [*live, *(f"durable:{name}={','.join(p)}" for name, p in durable.items())]
    return " ".join(shown) or "-"


def _ago(seconds: float) -> str:
    return f"{max(seconds, 0):.1f}s ago"


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    return format_table(header, rows) if rows else f"{header[0]}S: none"
