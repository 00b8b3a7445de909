"""``loom federate``: a broker's federation link, joining it to others through NATS
(``loom-broker --federate`` starts one by itself; see docs/federation.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from loom.config import FederationSettings, read_settings, validated
from loom.errors import ConfigError
from loom.session import serve_until_signalled

SETTINGS_ENV = "LOOM_FEDERATION_SETTINGS"
"""The ``[federation]`` settings as JSON, from a ``loom-broker`` that starts its link."""


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``federate`` to ``loom``'s parser."""
    federate = commands.add_parser(
        "federate",
        parents=[common],
        help="join this broker to others through NATS (its federation link)",
        epilog="examples:\n"
        "  loom federate --servers nats://10.0.0.5:4222,nats://10.0.0.6:4222\n"
        "  loom federate --config loom.toml        # its [federation] table\n"
        "the link presents the broker's own key (keys/broker.key_secret in the Loom\n"
        "home; --key FILE for another, --key none for an --insecure broker).\n"
        "see docs/federation.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    federate.add_argument("--config", type=Path, help="a TOML file with a [federation] table")
    federate.add_argument("--servers", help="NATS URLs, comma-separated (over the config's)")
    federate.add_argument(
        "--name", help="this broker's name across the federation (default: the broker's)"
    )


def federation_settings(config: Path | None, servers: str | None) -> FederationSettings:
    """``$LOOM_FEDERATION_SETTINGS`` (from ``loom-broker``), else the config file's
    ``[federation]`` table; ``servers`` over either.

    Raises:
        ConfigError: the settings are invalid, or name no NATS server.
    """
    table: dict[str, Any] = {}
    given = os.environ.pop(SETTINGS_ENV, "")
    if given:
        table = json.loads(given)
    elif config is not None:
        table = dict(read_settings(config).get("federation", {}))
    if servers:
        table["servers"] = [s.strip() for s in servers.split(",") if s.strip()]
    settings = validated(FederationSettings, table, config or "[federation]", "federation.")
    if not settings.servers:
        raise ConfigError("the federation needs NATS servers: --servers or [federation] servers")
    return settings


def run_federate(args: argparse.Namespace, broker: str) -> int:
    """Exit 2 for what starting again would not mend (the settings, a missing extra)."""
    try:
        from loom.federation import Link
    except ImportError as exc:
        print(
            f"loom federate: needs the federation extra ({exc}):"
            " pip install 'loom-mesh[federation]'",
            file=sys.stderr,
        )
        return 2
    try:
        settings = federation_settings(args.config, args.servers)
    except ConfigError as exc:
        print(f"loom federate: {exc}", file=sys.stderr)
        return 2
    key = os.environ.get("LOOM_KEY") or None
    link = Link(broker, settings, name=args.name, key=key)
    asyncio.run(serve_until_signalled(link.start, link.stop))
    return 0
