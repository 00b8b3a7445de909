"""``loom approvals``, ``loom approve``, ``loom deny``: the operator decides tool calls
that wait for approval. ``loom tap '$approval.**'`` follows requests and decisions live."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from typing import Any

from loom._tables import format_table
from loom.errors import ApprovalError
from loom.tools import ToolClient


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add the approval subcommands to ``loom``'s parser."""
    listing = commands.add_parser(
        "approvals",
        parents=[common],
        help="list tool calls waiting for approval",
        epilog="examples:\n  loom approvals\n  loom tap '$approval.**'   # follow them live",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listing.add_argument("--json", action="store_true", help="the requests as JSON")
    for verb, what in (("approve", "let a waiting call run"), ("deny", "answer it DENIED")):
        parser = commands.add_parser(
            verb,
            parents=[common],
            help=what,
            epilog=f"example: loom {verb} 7 --reason 'checked the path'",
        )
        parser.add_argument("id", type=int, help="the request's id (loom approvals)")
        parser.add_argument("--reason", default="", help="told to the caller and published")
        parser.add_argument("--by", default=None, help="your name (default: loom-<user>)")


async def list_approvals(args: argparse.Namespace, broker: str) -> int:
    async with await ToolClient.connect(broker, name="loom-approvals", timeout=args.timeout) as c:
        pending = await c.approvals(args.timeout)
    if args.json:
        print(json.dumps(pending, indent=2, default=repr))
    elif not pending:
        print("no calls wait for approval")
    else:
        rows = [
            (
                str(p["id"]),
                str(p["tool"]),
                str(p["caller"]),
                json.dumps(p["args"], default=repr)[:60],
                _clock(p["expires"]),
            )
            for p in pending
        ]
        print(format_table(("ID", "TOOL", "CALLER", "ARGS", "EXPIRES"), rows))
    return 0


async def decide(args: argparse.Namespace, broker: str) -> int:
    approve = args.command == "approve"
    by = args.by or f"loom-{_user()}"
    async with await ToolClient.connect(broker, name=by, timeout=args.timeout) as client:
        try:
            await client.decide(args.id, approve, reason=args.reason, by=by, timeout=args.timeout)
        except ApprovalError as exc:
            print(f"loom {args.command}: {exc}", file=sys.stderr)
            return 1
    print(f"#{args.id} {'approved' if approve else 'denied'}")
    return 0


def _clock(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix).strftime("%H:%M:%S")


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"
