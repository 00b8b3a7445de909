"""``loom sandbox check``: the sandbox layers this host supports, and a live escape probe."""

from __future__ import annotations

import argparse
import json
from typing import Any

from loom._tables import format_table
from loom.tools.sandbox import check_host


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``loom sandbox``'s subcommands to ``loom``'s parser."""
    sandbox = commands.add_parser(
        "sandbox",
        parents=[common],
        help="inspect the tool sandbox on this host",
        epilog="example: loom sandbox check",
    )
    actions = sandbox.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check", parents=[common], help="print the layers applied here and try a few escapes"
    )
    check.add_argument("--json", action="store_true", help="the report as JSON")


async def run_sandbox(args: argparse.Namespace) -> int:
    """Exit 0 when every probed escape was blocked, 1 otherwise."""
    report, escapes = await check_host()
    if args.json:
        print(json.dumps({"layers": report, "escapes": escapes}, indent=2))
    else:
        print(format_table(("LAYER", "STATE"), sorted(report.items())))
        print()
        print(format_table(("ESCAPE ATTEMPT", "RESULT"), list(escapes.items())))
    return 0 if all(result.startswith("blocked") for result in escapes.values()) else 1
