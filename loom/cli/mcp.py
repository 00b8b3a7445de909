"""``loom mcp attach FILE``: serve the tools of the MCP servers a file lists on the mesh;
``loom mcp serve``: serve the mesh's tools to MCP clients (stdio or Streamable HTTP)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from loom.config import read_settings, validated
from loom.errors import ConfigError
from loom.mcp import McpServerSettings, McpSettings


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``mcp attach`` and ``mcp serve`` to ``loom``'s parser."""
    mcp = commands.add_parser(
        "mcp",
        help="MCP both ways: attach MCP servers to the mesh, or serve the mesh over MCP",
        epilog="examples:\n"
        "  loom mcp attach configs/mcp.toml        # [mcp.servers.NAME] tables\n"
        "  loom mcp serve                          # stdio, for desktop MCP clients\n"
        "  loom mcp serve --transport http --port 7790 --tools 'fs.*'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = mcp.add_subparsers(dest="mcp_command", required=True, metavar="VERB")
    attach = verbs.add_parser(
        "attach",
        parents=[common],
        help="serve the tools of the MCP servers a settings file lists, as NAME.TOOL",
    )
    attach.add_argument("config", type=Path, help="a TOML file with [mcp.servers.NAME] tables")
    attach.add_argument("--name", help="the worker's name (default mcp-<pid>)")
    attach.add_argument(
        "--server", action="append", help="attach only this server (repeatable; default all)"
    )
    serve = verbs.add_parser(
        "serve", parents=[common], help="serve the mesh's tools to MCP clients"
    )
    serve.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    serve.add_argument("--host", default="127.0.0.1", help="HTTP: the address (loopback)")
    serve.add_argument("--port", type=int, default=7790, help="HTTP: the port (7790)")
    serve.add_argument(
        "--tools", nargs="*", default=["*"], help="patterns of the mesh tools to offer (all)"
    )
    serve.add_argument(
        "--token",
        help="HTTP: the bearer token clients must send (default: the Loom home's"
        " dashboard token; 'none': no token)",
    )


def load_servers(path: Path, only: list[str] | None = None) -> dict[str, McpServerSettings]:
    """The ``[mcp.servers.NAME]`` tables of a settings file (``cwd`` relative to it).

    Raises:
        ConfigError: the file or a table is invalid, or a ``--server`` is not in it.
    """
    data = read_settings(path)
    settings = validated(McpSettings, data.get("mcp", {}), path, "mcp.")
    servers = dict(settings.servers)
    for name, server in servers.items():
        if server.cwd is not None and not server.cwd.is_absolute():
            servers[name] = server.model_copy(update={"cwd": path.parent / server.cwd})
    if only:
        missing = [name for name in only if name not in servers]
        if missing:
            raise ConfigError(f"{path}: no [mcp.servers.{missing[0]}] table")
        servers = {name: servers[name] for name in only}
    if not servers:
        raise ConfigError(f"{path}: no [mcp.servers.NAME] tables")
    return servers


def run_mcp(args: argparse.Namespace, broker: str) -> int:
    if args.mcp_command == "attach":
        from loom.mcp import McpBridge

        servers = load_servers(args.config, args.server)
        McpBridge(servers, broker=broker, name=args.name, connect_timeout=args.timeout).run()
        return 0
    from loom.mcp import serve_mesh

    token = args.token
    asyncio.run(
        serve_mesh(
            broker,
            transport=args.transport,
            host=args.host,
            port=args.port,
            patterns=args.tools,
            token=token,
            connect_timeout=args.timeout,
        )
    )
    print("loom mcp serve: stopped", file=sys.stderr)
    return 0
