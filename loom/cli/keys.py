"""``loom keys new|show|list``: CURVE keypairs in the Loom home (or another directory)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from loom._tables import format_table
from loom.keys import Keypair, key_dir, list_keys, load_keypair, new_keypair

__all__ = ["add_parsers", "run_keys"]


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``loom keys``'s subcommands to ``loom``'s parser."""
    keys = commands.add_parser(
        "keys",
        parents=[common],
        help="make and show CURVE keypairs (identities)",
        epilog="example: loom keys new laptop && loom keys show laptop",
    )
    actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--dir",
        type=Path,
        help="the keys directory (default: the Loom home's, $LOOM_HOME/keys)",
    )
    new = actions.add_parser(
        "new", parents=[common, where], help="write a new keypair NAME.key, NAME.key_secret"
    )
    new.add_argument("name", help="its name: letters, digits, '.', '_', '-'")
    new.add_argument("--force", action="store_true", help="replace a keypair of that name")
    show = actions.add_parser(
        "show", parents=[common, where], help="print a key's public half (never the secret)"
    )
    show.add_argument("name", help="a key's name, or the path of a key file")
    show.add_argument("--json", action="store_true", help="as JSON")
    listing = actions.add_parser("list", parents=[common, where], help="every key and its file")
    listing.add_argument("--json", action="store_true", help="as JSON")


def run_keys(args: argparse.Namespace) -> int:
    """Run a ``loom keys`` action; exit 0, or raise ``KeyFileError``."""
    directory = args.dir.expanduser() if args.dir else key_dir(create=args.action == "new")
    if args.action == "new":
        pair = new_keypair(args.name, directory, force=args.force)
        print(pair.public.decode())
        print(f"loom keys: wrote {pair.path} (secret, 0600) and its .key", file=sys.stderr)
    elif args.action == "show":
        candidate = Path(args.name).expanduser()
        path = candidate if candidate.exists() else _named(directory, args.name)
        pair = load_keypair(path)
        if args.json:
            print(json.dumps(_summary(pair), indent=2))
        else:
            print(pair.public.decode())
    else:
        pairs = list_keys(directory)
        if args.json:
            print(json.dumps([_summary(pair) for pair in pairs], indent=2))
        else:
            rows = [
                (p.name, p.public.decode(), "yes" if p.secret else "no", str(p.path)) for p in pairs
            ]
            print(format_table(("NAME", "PUBLIC KEY", "SECRET", "FILE"), rows))
    return 0


def _named(directory: Path, name: str) -> Path:
    secret = directory / f"{name}.key_secret"
    return secret if secret.exists() else directory / f"{name}.key"


def _summary(pair: Keypair) -> dict[str, Any]:
    return {
        "name": pair.name,
        "public": pair.public.decode(),
        "secret": pair.secret is not None,
        "file": str(pair.path),
    }
