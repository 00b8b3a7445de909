"""``loom``: the operator's command line (pub, tap, stats, worker, list, call, demo)."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

from loom.actor import Actor, Event
from loom.actor.link import query
from loom.cli import run as run_commands
from loom.cli import tools as tool_commands
from loom.cli.demo import run_demo
from loom.config import broker_address
from loom.errors import LoomError
from loom.logs import configure_logging
from loom.protocol import STATS

EXAMPLES = """examples:
  loom demo                                   # a broker and demo actors, until Ctrl-C
  loom tap 'market.price.*'                   # print matching events as they pass
  loom pub market.price.BTC '{"price": 1}'    # publish one event
  loom stats                                  # the broker's counters as JSON
  loom worker my_tools.py                     # serve the @tool functions in a file
  loom list                                   # live actors, workers and tools
  loom call demo.stats '{"values": [1, 2]}'   # call a tool, print the result
  loom run configs/mesh.toml                  # start and supervise a whole mesh
"""


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--broker", help="broker control address (default: $LOOM_BROKER or tcp://127.0.0.1:7700)"
    )
    common.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for the broker (default: 5)"
    )
    common.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    common.add_argument("--log-level", default=None, help="debug, info, warning, error")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="loom",
        description="Loom: agents on a ZeroMQ mesh.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pub = commands.add_parser(
        "pub",
        parents=[common],
        help="publish one event",
        epilog="example: loom pub alerts.disk '{\"free_gb\": 3}'",
    )
    pub.add_argument("topic")
    pub.add_argument(
        "data", nargs="?", default="null", help="the event's data as JSON (default: null)"
    )

    tap = commands.add_parser(
        "tap",
        parents=[common],
        help="print events matching a pattern",
        epilog="example: loom tap 'market.**' --json",
    )
    tap.add_argument("pattern", nargs="?", default="**", help="topic pattern (default: **)")
    tap.add_argument(
        "--json", action="store_true", help="one JSON object per event, with header fields"
    )
    tap.add_argument(
        "--count", type=int, default=0, help="exit after this many events (default: never)"
    )

    commands.add_parser(
        "stats",
        parents=[common],
        help="print the broker's counters as JSON",
        epilog="example: loom stats --broker ipc:///tmp/loom.sock",
    )

    tool_commands.add_parsers(commands, common)
    run_commands.add_parsers(commands, common)

    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="run a broker with demo actors",
        epilog="example: loom demo --duration 20",
    )
    demo.add_argument(
        "--duration",
        type=float,
        default=0,
        help="stop after this many seconds (default: run until Ctrl-C)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":  # it configures logging from its file
        try:
            return run_commands.run_mesh(args)
        except LoomError as exc:
            print(f"loom run: {exc}", file=sys.stderr)
            return 2
    level = args.log_level or ("info" if args.command in ("demo", "worker", "actor") else "warning")
    configure_logging(json=args.log_json, level=level, stream=sys.stderr)
    broker = broker_address(args.broker)
    try:
        if args.command == "pub":
            try:
                data = json.loads(args.data)
            except json.JSONDecodeError as exc:
                print(f"loom pub: data is not JSON: {exc}", file=sys.stderr)
                return 2
            asyncio.run(_pub(broker, args.topic, data, args.timeout))
        elif args.command == "tap":
            asyncio.run(
                _tap(broker, args.pattern, args.timeout, as_json=args.json, count=args.count)
            )
        elif args.command == "stats":
            print(json.dumps(asyncio.run(_stats(broker, args.timeout)), indent=2, default=repr))
        elif args.command == "actor":
            return run_commands.run_actor(args, broker)
        elif args.command == "worker":
            return tool_commands.run_worker(args, broker)
        elif args.command == "list":
            return asyncio.run(tool_commands.list_mesh(args, broker))
        elif args.command == "call":
            return asyncio.run(tool_commands.call_tool(args, broker))
        else:
            return asyncio.run(run_demo(broker, args.duration))
    except LoomError as exc:
        print(f"loom {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _pub(broker: str, topic: str, data: Any, timeout: float) -> None:
    actor = Actor(name="loom-pub", broker=broker, connect_timeout=timeout)
    await actor.start()
    try:
        await actor.emit(topic, data)
    finally:
        await actor.stop()


def format_event(event: Event, *, as_json: bool) -> str:
    """One line for ``loom tap``: ``topic sender data`` or a JSON object."""
    if as_json:
        env = event.envelope
        return json.dumps(
            {
                "topic": event.topic,
                "sender": event.sender,
                "id": event.id,
                "kind": event.kind.name.lower(),
                "timestamp": env.timestamp,
                "thread_id": env.thread_id,
                "trace_id": event.trace_id,
                "hops": env.hops,
                "data": event.data,
            },
            default=repr,
            ensure_ascii=False,
        )
    return (
        f"{event.topic} {event.sender} {json.dumps(event.data, default=repr, ensure_ascii=False)}"
    )


async def _tap(broker: str, pattern: str, timeout: float, *, as_json: bool, count: int) -> None:
    done = asyncio.Event()
    seen = 0

    def show(event: Event) -> None:
        nonlocal seen
        print(format_event(event, as_json=as_json), flush=True)
        seen += 1
        if count and seen >= count:
            done.set()

    actor = Actor(name="loom-tap", broker=broker, connect_timeout=timeout)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    await actor.subscribe(pattern, show)
    await actor.start()
    print(f"loom tap: listening on {pattern!r} at {broker}", file=sys.stderr, flush=True)
    try:
        await done.wait()
    finally:
        await actor.stop()


async def _stats(broker: str, timeout: float) -> dict[str, Any]:
    return (await query(broker, STATS, timeout=timeout))[1]


if __name__ == "__main__":
    sys.exit(main())
