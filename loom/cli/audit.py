"""``loom audit``: read the broker's audit log (connections, denials, approvals, tool
registrations, ACL reloads), filtered, as lines or JSON, or followed live."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from loom.keys import loom_home

EXAMPLES = """examples:
  loom audit                          # every record of this home's broker
  loom audit --event denied           # denials only
  loom audit --identity alice --json  # one identity's records, as JSON lines
  loom audit --follow                 # new records as they are written
"""


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    audit = commands.add_parser(
        "audit",
        parents=[common],
        help="read the broker's audit log",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    audit.add_argument(
        "--file", help="the audit log (default: audit.jsonl in the Loom home, $LOOM_HOME)"
    )
    audit.add_argument("--identity", help="only this identity's records")
    audit.add_argument(
        "--event", help="only records of this event (connected, denied, approval...)"
    )
    audit.add_argument("--json", action="store_true", help="one JSON object per record")
    audit.add_argument("--follow", action="store_true", help="wait for new records")
    audit.add_argument("--limit", type=int, default=0, help="only the last N records")


def run_audit(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    path = Path(args.file).expanduser() if args.file else loom_home() / "audit.jsonl"
    if not path.exists() and not args.follow:
        print(f"loom audit: {path}: no audit log (has a broker run here?)", file=sys.stderr)
        return 1
    records = [r for r in _read(path, follow=False) if _wanted(r, args)]
    if args.limit:
        records = records[-args.limit :]
    for record in records:
        print(_format(record, as_json=args.json), file=out, flush=True)
    if args.follow:
        for record in _read(path, follow=True):
            if _wanted(record, args):
                print(_format(record, as_json=args.json), file=out, flush=True)
    return 0


def _read(path: Path, *, follow: bool) -> Iterator[dict[str, Any]]:
    """The records of ``path``: those there now, or (``follow``) those written later,
    across a rotation."""
    while follow and not path.exists():
        time.sleep(0.2)
    handle = path.open(encoding="utf-8", errors="replace")
    if follow:
        handle.seek(0, 2)
    while True:
        line = handle.readline()
        if line:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written, or damage: skip it
            if isinstance(record, dict):
                yield record
            continue
        if not follow:
            handle.close()
            return
        time.sleep(0.2)
        if path.exists() and path.stat().st_ino != os.fstat(handle.fileno()).st_ino:
            handle.close()  # rotated: the new file from its start
            handle = path.open(encoding="utf-8", errors="replace")


def _wanted(record: dict[str, Any], args: argparse.Namespace) -> bool:
    if args.identity and record.get("identity") != args.identity:
        return False
    return not (args.event and record.get("event") != args.event)


def _format(record: dict[str, Any], *, as_json: bool) -> str:
    if as_json:
        return json.dumps(record, ensure_ascii=False)
    when = record.get("time")
    stamp = (
        datetime.datetime.fromtimestamp(when).isoformat(timespec="seconds")
        if isinstance(when, (int, float))
        else "?"
    )
    rest = {k: v for k, v in record.items() if k not in ("time", "event", "identity")}
    details = " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in rest.items())
    return f"{stamp} {record.get('event', '?')} {record.get('identity', '?')} {details}".rstrip()
