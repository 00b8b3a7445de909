"""``loom dashboard``: serve the live web view of a mesh."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

import zmq

from loom.keys import dashboard_token
from loom.logs import get_logger


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``loom dashboard`` to ``loom``'s parser."""
    dashboard = commands.add_parser(
        "dashboard",
        parents=[common],
        help="serve a live web page of the mesh (topology, threads, metrics, tool calls)",
        epilog="examples:\n  loom dashboard                      # http://127.0.0.1:7780/\n"
        "  loom dashboard --port 8080 --interval 0.5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dashboard.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1)"
    )
    dashboard.add_argument(
        "--port", type=int, default=7780, help="port to serve on, 0 for any free one (7780)"
    )
    dashboard.add_argument(
        "--interval", type=float, default=1.0, help="seconds between updates (default: 1)"
    )


def run_dashboard(args: argparse.Namespace, broker: str) -> int:
    """Serve until Ctrl-C or SIGTERM; exit 2 for bad flags, 1 when the port is taken."""
    if args.interval <= 0 or not 0 <= args.port <= 65535:
        print("loom dashboard: --interval must be positive, --port 0-65535", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(args, broker))
    except OSError as exc:
        print(f"loom dashboard: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1


async def _serve(args: argparse.Namespace, broker: str) -> int:
    from loom.dashboard import Dashboard  # aiohttp is imported only by this command

    context: zmq.Context[Any] = zmq.Context()
    log = get_logger("loom.dashboard")
    token = dashboard_token()  # the page is this user's: its URL carries the home's token
    dashboard = Dashboard(broker, context=context, log=log, interval=args.interval, token=token)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        url = await dashboard.start(args.host, args.port)
        print(f"loom dashboard: {url} (broker {broker})", file=sys.stderr, flush=True)
        await stop.wait()
    finally:
        await dashboard.stop()
        context.term()
    return 0
