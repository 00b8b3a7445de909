"""What the MCP tests share: the real servers (installed when missing), a `loom mcp
attach` process, and waiting for tools to appear in the directory."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import ROOT, Proc, eventually

from loom import ToolClient

SERVERS = Path(__file__).parent / "servers"
PROBE = SERVERS / "probe.py"
EVERYTHING_VERSION = "2026.8.31"
NODE_PREFIX = ROOT / ".cache" / "mcp-node"
EVERYTHING = NODE_PREFIX / "node_modules" / ".bin" / "mcp-server-everything"


def everything() -> Path:
    """The npm ``@modelcontextprotocol/server-everything`` binary; installed into
    ``.cache/mcp-node`` when missing (``scripts/install-test-packages`` does it for CI)."""
    if not EVERYTHING.exists():
        npm = shutil.which("npm")
        assert npm is not None, "npm is missing: run scripts/install-test-packages"
        package = f"@modelcontextprotocol/server-everything@{EVERYTHING_VERSION}"
        command = [npm, "install", "--prefix", str(NODE_PREFIX), "--no-audit", "--no-fund"]
        subprocess.run([*command, package], check=True, capture_output=True, timeout=300)
    return EVERYTHING


def toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def stdio_server(name: str, command: list[str], **options: Any) -> str:
    """A ``[mcp.servers.NAME]`` table for a stdio server."""
    lines = [
        f"[mcp.servers.{name}]",
        f'command = "{command[0]}"',
        f"args = {toml_list(command[1:])}",
    ]
    lines += [f"{key} = {toml_value(value)}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


def http_server(name: str, url: str, **options: Any) -> str:
    lines = [f"[mcp.servers.{name}]", f'url = "{url}"']
    lines += [f"{key} = {toml_value(value)}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return toml_list(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def probe(name: str = "probe", **options: Any) -> str:
    return stdio_server(name, [sys.executable, str(PROBE)], **options)


def attach(spawn: Callable[..., Proc], mesh: str, tmp_path: Path, config: str, *extra: str) -> Proc:
    """``loom mcp attach`` on ``config`` (TOML text), once its worker is ready."""
    path = tmp_path / "mcp.toml"
    path.write_text(config)
    command = [sys.executable, "-m", "loom.cli.main", "mcp", "attach", str(path)]
    proc = spawn(*command, "--broker", mesh, "--name", "bridge", *extra)
    proc.wait_line("worker ready", timeout=30)
    return proc


async def tools_named(client: ToolClient, *names: str, timeout: float = 30.0) -> dict[str, Any]:
    """The directory's entries for ``names``, once every one is there."""

    async def listed() -> dict[str, Any] | None:
        tools = {tool.name: tool for tool in (await client.directory()).tools}
        return tools if all(name in tools for name in names) else None

    found: dict[str, Any] = await eventually(listed, timeout)
    return found
