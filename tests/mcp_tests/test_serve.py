"""The mesh as an MCP server: the official SDK's client talks to `loom mcp serve` over
stdio and Streamable HTTP, listing and calling Loom `@tool`s served by a real worker."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import mcp_types as types
import pytest
from conftest import Proc, eventually, free_tcp_endpoint, start_worker, wait_for
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from mcp_helpers import attach, everything, probe, stdio_server

from loom.keys import dashboard_token

pytestmark = pytest.mark.timeout(90)

SERVE = [sys.executable, "-m", "loom.cli.main", "mcp", "serve"]


@pytest.fixture
def endpoint() -> str:
    """The broker on loopback TCP only: the MCP side is what these tests are about."""
    return free_tcp_endpoint()


def stdio(mesh: str, *extra: str) -> StdioServerParameters:
    """`loom mcp serve` over stdio, as a desktop MCP client would start it."""
    env = {"LOOM_HOME": os.environ["LOOM_HOME"], "TMPDIR": os.environ["TMPDIR"]}
    return StdioServerParameters(
        command=SERVE[0], args=[*SERVE[1:], "--broker", mesh, *extra], env=env
    )


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_an_mcp_client_lists_and_calls_loom_tools_over_stdio(
    mesh: str, spawn: Callable[..., Proc], tmp_path: Path, mode: str
) -> None:
    """tools/list comes from the live directory (schemas, descriptions, hints); a call
    goes through the broker to the worker; progress comes back as MCP progress; a
    failing tool is an isError result; an unknown one a protocol error; cancelling
    the MCP request cancels the Loom call on its worker. Both protocol generations."""
    start_worker(spawn, mesh, "w1")

    async def go() -> None:
        async with Client(stdio(mesh, "--tools", "sample.*"), mode=mode, cache=None) as client:
            assert client.protocol_version == ("2026-07-28" if mode == "auto" else "2025-11-25")
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
            assert {"sample.add", "sample.crawl", "sample.boom"} <= set(tools)
            add = tools["sample.add"]
            assert add.input_schema["properties"]["a"]["type"] == "integer"
            assert add.annotations is not None and add.annotations.idempotent_hint
            result = await client.call_tool("sample.add", {"a": 2, "b": 40})
            assert not result.is_error and result.content[0].text == "42"

            reports: list[tuple[float, float | None, str | None]] = []

            async def progress(done: float, total: float | None, message: str | None) -> None:
                reports.append((done, total, message))

            crawled = await client.call_tool(
                "sample.crawl", {"steps": 3, "interval": 0.2}, progress_callback=progress
            )
            assert crawled.content[0].text == "3"
            assert [r[0] for r in reports] == [1.0, 2.0, 3.0]
            assert '"step": 1' in (reports[0][2] or "")

            failed = await client.call_tool("sample.boom", {"message": "kaput"})
            assert failed.is_error and "kaput" in failed.content[0].text
            invalid = await client.call_tool("sample.add", {"a": "x"})
            assert invalid.is_error and "INVALID_PARAMS" in invalid.content[0].text
            with pytest.raises(MCPError, match="Unknown tool"):  # not offered: --tools
                await client.call_tool("demo.stats", {"values": [1]})

            marker = tmp_path / "marker"
            call = asyncio.ensure_future(
                client.call_tool("sample.wait_cancel", {"marker": str(marker)})
            )
            await asyncio.to_thread(wait_for, marker.exists)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            await asyncio.to_thread(wait_for, lambda: marker.read_text() == "cancelled")

    asyncio.run(go())


def test_workers_coming_and_going_change_the_list(mesh: str, spawn: Callable[..., Proc]) -> None:
    """A handshake-era client gets notifications/tools/list_changed, a 2026-07-28 client
    a subscriptions/listen event, when a worker joins and when it leaves."""
    start_worker(spawn, mesh, "w1")

    async def go() -> None:
        changes: list[Any] = []

        async def on_message(message: Any) -> None:
            if isinstance(message, types.ToolListChangedNotification):
                changes.append(message)

        legacy = Client(stdio(mesh), mode="legacy", cache=None, message_handler=on_message)
        modern = Client(stdio(mesh), cache=None)
        async with legacy, modern, modern.listen(tools_list_changed=True) as events:
            names = {tool.name for tool in (await legacy.list_tools()).tools}
            assert "demo.stats" not in names
            await modern.list_tools()
            worker = await asyncio.to_thread(
                start_worker, spawn, mesh, "demo", target="loom.demo.tools"
            )
            async with asyncio.timeout(15):
                await anext(aiter(events))
            await until_async(lambda: len(changes) >= 1)
            names = {tool.name for tool in (await modern.list_tools()).tools}
            assert "demo.stats" in names
            await asyncio.to_thread(worker.stop)
            async with asyncio.timeout(15):
                await anext(aiter(events))
            await until_async(lambda: len(changes) >= 2)
            names = {tool.name for tool in (await legacy.list_tools()).tools}
            assert "demo.stats" not in names

    asyncio.run(go())


async def until_async(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def test_streamable_http_with_a_token_and_origin_checks(
    mesh: str, spawn: Callable[..., Proc]
) -> None:
    """Over Streamable HTTP on loopback: the bearer token (the Loom home's dashboard
    token by default) is required; a foreign Origin is refused; with both right, the
    SDK client lists and calls."""
    start_worker(spawn, mesh, "w1")
    port = int(free_tcp_endpoint().rsplit(":", 1)[1])
    server = spawn(*SERVE, "--broker", mesh, "--transport", "http", "--port", str(port))
    server.wait_line("serving the mesh over MCP", timeout=30)
    url = f"http://127.0.0.1:{port}/mcp"
    token = dashboard_token()
    hello = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    accept = {"accept": "application/json, text/event-stream"}
    bare = httpx.post(url, json=hello, headers=accept, timeout=10)
    assert bare.status_code == 401
    wrong = httpx.post(url, json=hello, headers={**accept, "authorization": "Bearer x"})
    assert wrong.status_code == 401
    authorized = {**accept, "authorization": f"Bearer {token}"}
    foreign = httpx.post(url, json=hello, headers={**authorized, "origin": "http://evil.test"})
    assert foreign.status_code == 403

    async def go() -> None:
        http = create_mcp_http_client(headers={"authorization": f"Bearer {token}"})
        async with http, Client(streamable_http_client(url, http_client=http)) as client:
            tools = {tool.name for tool in (await client.list_tools()).tools}
            assert "sample.add" in tools
            result = await client.call_tool("sample.add", {"a": 1, "b": 2})
            assert result.content[0].text == "3"

    asyncio.run(go())


def test_bridged_mcp_tools_served_back_over_mcp(
    mesh: str, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """An MCP server attached to the mesh, then offered by `loom mcp serve`: its tools
    keep their output schema (or none), text-only results stay text, structured ones
    structured, so the SDK's client (which checks outputSchema) accepts both."""
    config = stdio_server("every", [str(everything()), "stdio"]) + probe()
    attach(spawn, mesh, tmp_path, config)

    async def go() -> None:
        async with Client(stdio(mesh, "--tools", "every.*", "probe.*"), cache=None) as client:

            async def listed() -> dict[str, Any] | None:
                tools = {tool.name: tool for tool in (await client.list_tools()).tools}
                return tools if {"every.echo", "probe.pid"} <= set(tools) else None

            tools = await eventually(listed, 30)
            assert tools["every.echo"].output_schema is None
            assert tools["probe.pid"].output_schema is not None
            echoed = await client.call_tool("every.echo", {"message": "round trip"})
            assert not echoed.is_error and echoed.content[0].text == "Echo: round trip"
            pid = await client.call_tool("probe.pid", {})
            assert isinstance(pid.structured_content["result"], int)  # type: ignore[index]

    asyncio.run(go())
