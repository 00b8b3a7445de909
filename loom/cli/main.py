"""``loom``: the operator's command line (pub, tap, stats, worker, list, call, demo)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import signal
import sys
from typing import Any

from loom.actor import Actor, Event
from loom.cli import agent as agent_commands
from loom.cli import approvals as approval_commands
from loom.cli import audit as audit_commands
from loom.cli import bench as bench_commands
from loom.cli import dashboard as dashboard_commands
from loom.cli import desktop as desktop_commands
from loom.cli import federate as federate_commands
from loom.cli import keys as key_commands
from loom.cli import mcp as mcp_commands
from loom.cli import new as new_commands
from loom.cli import run as run_commands
from loom.cli import sandbox as sandbox_commands
from loom.cli import stats as stats_commands
from loom.cli import tools as tool_commands
from loom.cli import trace as trace_commands
from loom.cli._parent import die_with_parent
from loom.cli.demo import run_demo
from loom.config import broker_address
from loom.errors import LoomError, RefusedError, RemoteError, RequestTimeoutError
from loom.logs import configure_logging
from loom.protocol import REPLAY, ReplayAnswer, decode_header, decode_payload, decode_topic
from loom.session import ask

EXAMPLES = """examples:
  loom demo                                   # a broker, demo actors, a dashboard on :7780
  loom tap 'market.price.*'                   # print matching events as they pass
  loom pub market.price.BTC '{"price": 1}'    # publish one event
  loom request research.ask '{"q": "tides"}' --all  # ask every responder, print the replies
  loom stats                                  # the broker's counters as JSON
  loom stats --watch                          # live per-topic rates
  loom replay 'orders.**' --since 100         # durable events logged after #100
  loom worker my_tools.py                     # serve the @tool functions in a file
  loom list                                   # live actors, workers and tools
  loom call demo.stats '{"values": [1, 2]}'   # call a tool, print the result
  loom run configs/mesh.toml                  # start and supervise a whole mesh
  loom new trio research-desk                 # a runnable project from a template
  loom dev mesh.toml                          # loom run, restarting what you edit
  loom ps                                     # its children: state, pid, restarts
  loom restart trader                         # restart one of them now
  loom sandbox check                          # the tool sandbox's layers on this host
  loom approvals                              # tool calls waiting for approval
  loom approve 7                              # let call #7 run (loom deny 7: refuse it)
  loom keys new alice                         # a CURVE keypair for a peer elsewhere
  loom audit --event denied                   # what the broker refused, and to whom
  loom trace 3f2a9c1e...                      # one trace's messages and tool calls, timed
  loom bench tools --runs 3                   # run benchmarks, print their tables
  loom dashboard                              # a live web page of the mesh (port 7780)
  loom agent analyst --llm local              # a cognitive actor on a configured LLM
  loom ask analyst 'What failed today?'       # give it a task, print the answer
  loom llm-stub script.json --port 8088       # a scripted LLM, to try agents offline
  loom mcp attach configs/mcp.toml            # MCP servers' tools on the mesh, as NAME.TOOL
  loom mcp serve                              # the mesh's tools to an MCP client (stdio)
  loom desktop --config configs/desktop.toml  # hotkeys, clipboard, folders, timers, notify
  loom desktop check                          # which desktop backends this host offers
  loom federate --servers nats://HOST:4222    # join this broker to others through NATS
"""


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--broker", help="broker control address (default: $LOOM_BROKER or tcp://127.0.0.1:7700)"
    )
    common.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for the broker (default: 5)"
    )
    common.add_argument(
        "--key",
        metavar="FILE",
        help="this peer's CURVE key file, NAME.key_secret ('none': no CURVE, for a broker"
        " run --insecure; default: $LOOM_KEY, else the Loom home's local key)",
    )
    common.add_argument(
        "--broker-key",
        metavar="KEY",
        help="the broker's public key: a .key file or 40 Z85 characters (default:"
        " $LOOM_BROKER_KEY, else keys/broker.key in the Loom home)",
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
        "--qos",
        choices=("standard", "realtime", "reliable", "background"),
        default="standard",
        help="reliable: logged by the broker (durable) and acknowledged",
    )
    pub.add_argument(
        "data", nargs="?", default="null", help="the event's data as JSON (default: null)"
    )

    request = commands.add_parser(
        "request",
        parents=[common],
        help="send one request; print the reply (or, with --all/--k, every reply) as JSON",
        epilog='examples:\n  loom request research.ask \'{"q": "tides"}\' --timeout 10\n'
        '  loom request research.ask \'{"q": "tides"}\' --all\n'
        '  loom request research.ask \'{"q": "tides"}\' --k 2 --success',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    request.add_argument("topic")
    request.add_argument(
        "data", nargs="?", default="null", help="the request's data as JSON (default: null)"
    )
    request.add_argument(
        "--all", action="store_true", help="ask every responder; wait for all (or --timeout)"
    )
    request.add_argument("--k", type=int, help="ask every responder; keep the first K replies")
    request.add_argument(
        "--success", action="store_true", help="only successful replies count (else: the first)"
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

    stats_commands.add_parsers(commands, common)

    tool_commands.add_parsers(commands, common)
    replay_parser = commands.add_parser(
        "replay",
        parents=[common],
        help="print past durable events",
        epilog="examples:\n  loom replay 'orders.**' --since 1200\n"
        "  loom replay 'orders.**' --since 2026-11-21T10:00:00 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    replay_parser.add_argument("pattern", nargs="?", default="**")
    replay_parser.add_argument(
        "--since", default="0", help="a sequence number (after it) or an ISO time (from it)"
    )
    replay_parser.add_argument("--limit", type=int, default=0, help="at most this many (0: all)")
    replay_parser.add_argument("--json", action="store_true", help="one JSON object per event")
    run_commands.add_parsers(commands, common)
    sandbox_commands.add_parsers(commands, common)
    key_commands.add_parsers(commands, common)
    audit_commands.add_parsers(commands, common)
    approval_commands.add_parsers(commands, common)
    trace_commands.add_parsers(commands, common)
    bench_commands.add_parsers(commands, common)
    dashboard_commands.add_parsers(commands, common)
    agent_commands.add_parsers(commands, common)
    mcp_commands.add_parsers(commands, common)
    desktop_commands.add_parsers(commands, common)
    federate_commands.add_parsers(commands, common)
    new_commands.add_parsers(commands, common)

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
    demo.add_argument(
        "--dashboard-port",
        type=int,
        default=7780,
        help="serve the live dashboard on this port (default 7780; 0: none)",
    )
    return parser


LONG_RUNNING = frozenset(
    ("demo", "worker", "actor", "agent", "dashboard", "mcp", "desktop", "federate")
)
"""Commands that log at ``info`` unless told otherwise (the rest: ``warning``)."""


def main(argv: list[str] | None = None) -> int:
    """``loom``: exit 0 on success, 1 when a command fails, 2 on bad usage, 130 on
    Ctrl-C; a reader that stops early (``loom replay | head``) ends it quietly."""
    die_with_parent()
    try:
        return _command(argv)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Standard output's reader is gone: point it at /dev/null so that the flush at
        # exit does not fail again, and stop without a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _command(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    # The keys every connection of this process (and its children) presents: the
    # library reads them from the environment when no key= is given.
    if getattr(args, "key", None):
        os.environ["LOOM_KEY"] = args.key
    if getattr(args, "broker_key", None):
        os.environ["LOOM_BROKER_KEY"] = args.broker_key
    if args.command in ("run", "dev"):  # they configure logging from their file
        try:
            return run_commands.run_mesh(args)
        except LoomError as exc:
            print(f"loom run: {exc}", file=sys.stderr)
            return 2
    level = args.log_level or ("info" if args.command in LONG_RUNNING else "warning")
    configure_logging(json=args.log_json, level=level)
    broker = broker_address(args.broker)
    try:
        if args.command == "pub":
            try:
                data = json.loads(args.data)
            except json.JSONDecodeError as exc:
                print(f"loom pub: data is not JSON: {exc}", file=sys.stderr)
                return 2
            asyncio.run(_pub(broker, args.topic, data, args.timeout, args.qos))
        elif args.command == "request":
            return asyncio.run(_request(broker, args))
        elif args.command == "tap":
            asyncio.run(
                _tap(broker, args.pattern, args.timeout, as_json=args.json, count=args.count)
            )
        elif args.command == "stats":
            try:
                return asyncio.run(stats_commands.show_stats(args, broker))
            except KeyboardInterrupt:  # how --watch ends
                return 0
        elif args.command == "replay":
            return asyncio.run(replay(args, broker))
        elif args.command == "ps":
            return asyncio.run(run_commands.show_children(args))
        elif args.command == "restart":
            return asyncio.run(run_commands.restart_child(args))
        elif args.command == "actor":
            return run_commands.run_actor(args, broker)
        elif args.command == "worker":
            return tool_commands.run_worker(args, broker)
        elif args.command == "list":
            return asyncio.run(tool_commands.list_mesh(args, broker))
        elif args.command == "call":
            return asyncio.run(tool_commands.call_tool(args, broker))
        elif args.command == "approvals":
            return asyncio.run(approval_commands.list_approvals(args, broker))
        elif args.command in ("approve", "deny"):
            return asyncio.run(approval_commands.decide(args, broker))
        elif args.command == "agent":
            return agent_commands.run_agent(args, broker)
        elif args.command == "ask":
            return asyncio.run(agent_commands.ask_agent(args, broker))
        elif args.command == "llm-stub":
            return agent_commands.run_llm_stub(args)
        elif args.command == "bench":
            return asyncio.run(bench_commands.run_benches(args))
        elif args.command == "dashboard":
            return dashboard_commands.run_dashboard(args, broker)
        elif args.command == "trace":
            return asyncio.run(trace_commands.show_trace(args, broker))
        elif args.command == "sandbox":
            return asyncio.run(sandbox_commands.run_sandbox(args))
        elif args.command == "keys":
            return key_commands.run_keys(args)
        elif args.command == "audit":
            return audit_commands.run_audit(args)
        elif args.command == "new":
            return new_commands.run_new(args)
        elif args.command == "mcp":
            return mcp_commands.run_mcp(args, broker)
        elif args.command == "desktop":
            return desktop_commands.run_desktop(args, broker)
        elif args.command == "federate":
            return federate_commands.run_federate(args, broker)
        else:
            return asyncio.run(run_demo(broker, args.duration, args.dashboard_port))
    except LoomError as exc:
        print(f"loom {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _request(broker: str, args: argparse.Namespace) -> int:
    """One request: the reply (exit 1 on a failure or no reply); with --all or --k, the
    gathered replies, failures and missing responders (exit 1 when the policy was not
    met); 2 for data that is not JSON."""
    try:
        data = json.loads(args.data)
    except json.JSONDecodeError as exc:
        print(f"loom request: data is not JSON: {exc}", file=sys.stderr)
        return 2
    actor = Actor(name="loom-request", broker=broker, connect_timeout=args.timeout, unique=False)
    await actor.start()
    try:
        if args.all or args.k:
            gathered = await actor.gather(
                args.topic,
                data,
                policy=args.k or "all",
                successful=args.success,
                timeout=args.timeout,
            )
            print(json.dumps(gathered.as_dict(), default=repr, ensure_ascii=False))
            return 0 if gathered.complete else 1
        try:
            reply = await actor.request(
                args.topic,
                data,
                timeout=args.timeout,
                accept="first_success" if args.success else "first",
            )
        except (RemoteError, RequestTimeoutError) as exc:
            print(f"loom request: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(reply, default=repr, ensure_ascii=False))
        return 0
    finally:
        await actor.stop()


async def _pub(broker: str, topic: str, data: Any, timeout: float, qos: str) -> None:
    actor = Actor(name="loom-pub", broker=broker, connect_timeout=timeout, unique=False)
    await actor.start()
    try:
        await actor.emit(topic, data, qos=qos)
    finally:
        await actor.stop()


def format_event(event: Event, *, as_json: bool, **extra: Any) -> str:
    """One line for ``loom tap`` (and ``loom replay``, whose ``extra`` fields lead):
    ``topic sender data`` or a JSON object with the header fields."""
    if as_json:
        env = event.envelope
        return json.dumps(
            {
                **extra,
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
    lead = "".join(f"{value} " for value in extra.values())
    data = json.dumps(event.data, default=repr, ensure_ascii=False)
    return f"{lead}{event.topic} {event.sender} {data}"


async def _tap(broker: str, pattern: str, timeout: float, *, as_json: bool, count: int) -> None:
    done = asyncio.Event()
    seen = 0

    def show(event: Event) -> None:
        nonlocal seen
        print(format_event(event, as_json=as_json), flush=True)
        seen += 1
        if count and seen >= count:
            done.set()

    actor = Actor(name="loom-tap", broker=broker, connect_timeout=timeout, unique=False)
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


async def replay(args: argparse.Namespace, broker: str) -> int:
    """Page through the broker's durable log, printing what matches."""
    after, since_time = 0, None
    if args.since.isdigit():
        after = int(args.since)
    else:
        try:
            moment = datetime.datetime.fromisoformat(args.since)
        except ValueError:
            print(f"loom replay: --since {args.since!r}: not a number or ISO time", file=sys.stderr)
            return 2
        if moment.tzinfo is None:
            moment = moment.astimezone()
        since_time = moment.timestamp()
    shown = 0
    while True:
        body = {"pattern": args.pattern, "limit": 1000, "since": after, "since_time": since_time}
        try:
            page = await ask(broker, REPLAY, body, ReplayAnswer, timeout=args.timeout)
        except RefusedError as exc:
            print(f"loom replay: {exc.code}: {exc}", file=sys.stderr)
            return 1
        for seq, when, topic, header, payload in page.events:
            envelope = decode_header(header)
            event = Event(
                decode_topic(topic), decode_payload(payload, envelope.content_type), envelope
            )
            if args.json:
                print(format_event(event, as_json=True, seq=seq, logged=when), flush=True)
            else:
                print(format_event(event, as_json=False, seq=seq), flush=True)
            shown += 1
            if args.limit and shown >= args.limit:
                return 0
        if page.next >= page.last_seq:
            return 0
        after = page.next


if __name__ == "__main__":
    sys.exit(main())
