"""MCP servers as mesh tools: `loom mcp attach` against real MCP servers (PyPI's
mcp-server-time, npm's server-everything, a probe server built on the official SDK),
over stdio, Streamable HTTP and HTTP+SSE, with a real broker and real callers."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import (
    ACTORS,
    ROOT,
    eventually,
    free_tcp_endpoint,
    start_broker,
    start_worker,
    until,
    wait_for,
)
from mcp import Client, StdioServerParameters
from mcp_helpers import attach, everything, http_server, probe, stdio_server, tools_named

from loom import Actor, Event, ToolClient
from loom.cognition import ScriptedLLM
from loom.errors import (
    InvalidParamsError,
    ToolDeniedError,
    ToolFailedError,
    ToolTimeoutError,
    UnknownToolError,
    WorkerLostError,
)
from loom.keys import dashboard_token, new_keypair

pytestmark = pytest.mark.timeout(90)

TIME = [sys.executable, "-m", "mcp_server_time", "--local-timezone", "UTC"]


@pytest.fixture
def endpoint() -> str:
    """The broker on loopback TCP only: the bridge is what these tests are about."""
    return free_tcp_endpoint()


def free_port() -> int:
    return int(free_tcp_endpoint().rsplit(":", 1)[1])


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_stdio_servers_tools_are_mesh_tools(
    mesh: str, spawn: Callable[..., Any], tmp_path: Path
) -> None:
    """mcp-server-time and server-everything over stdio: their tools are in the
    directory as NAME.TOOL with schema, description and annotations; an actor calls
    one with `self.tool`; results keep text, content items and structured content."""
    config = stdio_server("time", TIME) + stdio_server("every", [str(everything()), "stdio"])
    attach(spawn, mesh, tmp_path, config)

    async def go() -> None:
        async with await ToolClient.connect(mesh) as client:
            tools = await tools_named(client, "time.get_current_time", "every.get-sum")
            current = tools["time.get_current_time"]
            assert "timezone" in current.schema_["properties"]
            assert current.description.startswith("Get current time")
            assert current.annotations["mcp"] == {"server": "time", "tool": "get_current_time"}
            assert tools["every.echo"].annotations["readOnlyHint"] is True
            assert tools["every.echo"].idempotent  # read-only: safe to run again
            assert tools["every.get-sum"].workers == ["bridge"]

            actor = Actor(name="mcp-caller", broker=mesh)
            await actor.start()
            try:
                now = await actor.tool("time.get_current_time", timezone="Europe/Paris")
            finally:
                await actor.stop()
            assert now["structured"]["timezone"] == "Europe/Paris"
            assert now["content"][0]["type"] == "text" and "Europe/Paris" in now["text"]

            total = await client.call("every.get-sum", {"a": 2, "b": 3})
            assert "5" in total["text"]
            image = await client.call("every.get-tiny-image", {})
            kinds = [item["type"] for item in image["content"]]
            assert "image" in kinds
            picture = next(item for item in image["content"] if item["type"] == "image")
            assert picture["mime_type"] == "image/png" and len(picture["data"]) > 100
            structured = await client.call("every.get-structured-content", {"location": "Chicago"})
            assert isinstance(structured["structured"], dict) and structured["structured"]
            links = await client.call("every.get-resource-links", {"count": 2})
            assert [i["type"] for i in links["content"]].count("resource_link") == 2
            embedded = await client.call("every.get-resource-reference", {"resourceType": "Text"})
            assert any(item["type"] == "resource" for item in embedded["content"])

            with pytest.raises(ToolFailedError) as failed:  # isError: the server's text
                await client.call("time.get_current_time", {"timezone": "Mars/Olympus"})
            assert "Mars/Olympus" in str(failed.value)
            with pytest.raises(InvalidParamsError):  # not a map: refused before the server
                await client.call("time.get_current_time", ["UTC"])  # type: ignore[arg-type]
            with pytest.raises(UnknownToolError):
                await client.call("time.nothing", {})

    asyncio.run(go())


def test_resources_and_prompts_are_mesh_tools(
    mesh: str, spawn: Callable[..., Any], tmp_path: Path
) -> None:
    """resources/list, resources/read, templates, prompts/list and prompts/get are
    reachable as NAME.resources.* and NAME.prompts.*."""
    attach(spawn, mesh, tmp_path, stdio_server("every", [str(everything()), "stdio"]))

    async def go() -> None:
        async with await ToolClient.connect(mesh) as client:
            await tools_named(client, "every.resources.read", "every.prompts.get")
            listed = await client.call("every.resources.list", {})
            uris = [item["uri"] for item in listed["resources"]]
            assert any(uri.endswith("architecture.md") for uri in uris)
            document = next(uri for uri in uris if uri.endswith("architecture.md"))
            read = await client.call("every.resources.read", {"uri": document})
            assert "Architecture" in read["text"] and read["contents"][0]["uri"] == document
            templates = await client.call("every.resources.templates", {})
            assert templates["templates"] and "uri_template" in templates["templates"][0]
            prompts = await client.call("every.prompts.list", {})
            names = [item["name"] for item in prompts["prompts"]]
            assert "args-prompt" in names
            prompt = await client.call(
                "every.prompts.get",
                {"name": "args-prompt", "arguments": {"city": "Lyon", "state": "Rhone"}},
            )
            assert "Lyon" in prompt["text"] and prompt["messages"][0]["role"] == "user"
            with pytest.raises(InvalidParamsError):
                await client.call("every.resources.read", {"uri": ""})

    asyncio.run(go())


def test_progress_extends_the_lease_and_silence_times_out(
    mesh: str, spawn: Callable[..., Any], tmp_path: Path
) -> None:
    """With a 1 s lease, a 3 s call reporting progress every 0.3 s succeeds (each report
    reaches the caller); a call silent for longer than the lease ends as TIMEOUT."""
    attach(spawn, mesh, tmp_path, probe(timeout=1.0))

    async def go() -> None:
        async with await ToolClient.connect(mesh) as client:
            await tools_named(client, "probe.tick")
            reports: list[Any] = []
            done = await client.call(
                "probe.tick", {"steps": 10, "every": 0.3}, on_progress=reports.append
            )
            assert done["text"] == "10 steps"
            assert len(reports) >= 5 and reports[-1]["total"] == 10
            assert reports[0]["message"] == "step 1"
            with pytest.raises(ToolTimeoutError):
                await client.call("probe.slow", {"seconds": 5, "marker": str(tmp_path / "m")})

    asyncio.run(go())


def test_max_duration_ends_a_call_that_keeps_reporting(
    mesh: str, spawn: Callable[..., Any], tmp_path: Path
) -> None:
    """Progress extends the lease, but never past `max_duration`: a call reporting every
    0.2 s for 6 s ends as TIMEOUT after 2 s, naming the cap."""
    attach(spawn, mesh, tmp_path, probe(timeout=1.0, max_duration=2.0))

    async def go() -> None:
        async with await ToolClient.connect(mesh) as client:
            await tools_named(client, "probe.tick")
            with pytest.raises(ToolTimeoutError, match="within 2s"):  # the cap, not the lease
                await client.call("probe.tick", {"steps": 30, "every": 0.2})

    asyncio.run(go())


def test_cancelling_a_call_reaches_the_server(
    mesh: str, spawn: Callable[..., Any], tmp_path: Path
) -> None:
    """A caller that gives up cancels the call on the mesh; the bridge sends
    notifications/cancelled and the server's handler is cancelled."""
    attach(spawn, mesh, tmp_path, probe())
    marker = tmp_path / "cancelled"

    async def go() -> None:
        async with await ToolClient.connect(mesh) as client:
            await tools_named(client, "probe.slow")
            call = asyncio.ensure_future(
                client.call("probe.slow", {"seconds": 30, "marker": str(marker)})
            )
            await until(lambda: marker.exists() and marker.read_text() == "started", 15)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call

    asyncio.run(go())
    assert wait_for(lambda: marker.read_text() == "cancelled", timeout=10)


def test_a_server_killed_mid_call_is_restarted(
    mesh: str, spawn: Callable[..., Any], tmp_path: Path
) -> None:
    """Killing the server's process: the call in flight ends WORKER_LOST, the server is
    started again (a new pid), and calls work again."""
    proc = attach(spawn, mesh, tmp_path, probe(restart_backoff=0.1))

    async def go() -> None:
        async with await ToolClient.connect(mesh) as client:
            await tools_named(client, "probe.pid")
            first = (await client.call("probe.pid", {}))["structured"]["result"]
            marker = tmp_path / "m"
            call = asyncio.ensure_future(
                client.call("probe.slow", {"seconds": 30, "marker": str(marker)})
            )
            await until(marker.exists, 15)  # the call is in the server
            os.kill(first, signal.SIGKILL)
            with pytest.raises(WorkerLostError):
                await call

            async def new_pid() -> int | None:
                try:
                    pid = (await client.call("probe.pid", {}, timeout=5))["structured"]
                except WorkerLostError:
                    return None
                return int(pid["result"]) if pid["result"] != first else None

            second = await eventually(new_pid, timeout=30)
            assert second != first

    asyncio.run(go())
    assert "mcp server restarting" in proc.output


def test_list_changes_update_the_directory(
    mesh: str, spawn: Callable[..., Any], tmp_path: Path
) -> None:
    """A tool the server adds at run time appears on the mesh and can be called; a tool
    it removes disappears (the probe speaks 2026-07-28: changes arrive on
    subscriptions/listen). server-everything (the handshake era) announces its
    capability-dependent tools with notifications/tools/list_changed after start; with
    roots configured, get-roots-list appears and answers the configured roots."""
    config = probe() + stdio_server(
        "every", [str(everything()), "stdio"], roots=["file:///srv/data"]
    )
    attach(spawn, mesh, tmp_path, config)

    async def go() -> None:
        async with await ToolClient.connect(mesh) as client:
            await tools_named(client, "probe.grow", "every.get-roots-list")
            roots = await client.call("every.get-roots-list", {})
            assert "file:///srv/data" in roots["text"]
            await client.call("probe.grow", {"name": "x" * 250})  # too long for the mesh
            await client.call("probe.grow", {"name": "extra"})
            await tools_named(client, "probe.extra")  # the bad one left only itself out
            assert not [t for t in (await client.directory()).tools if "xxxx" in t.name]
            assert (await client.call("probe.extra", {}))["text"] == "extra here"
            await client.call("probe.shrink", {"name": "extra"})

            async def gone() -> bool:
                return (await client.directory()).tool("probe.extra") is None

            await eventually(gone, timeout=15)

    asyncio.run(go())


@pytest.mark.parametrize("transport", ["streamableHttp", "sse"])
def test_http_servers_streamable_then_sse(
    mesh: str, spawn: Callable[..., Any], tmp_path: Path, transport: str
) -> None:
    """server-everything over Streamable HTTP and over the 2024-11-05 HTTP+SSE
    transport, both given by URL only: Streamable HTTP is tried first, SSE is the
    fallback. Tools listed and called, progress relayed."""
    port = free_port()
    server = spawn(str(everything()), transport, env={"PORT": str(port)})
    server.wait_line(str(port), timeout=30)
    path = "/mcp" if transport == "streamableHttp" else "/sse"
    attach(spawn, mesh, tmp_path, http_server("web", f"http://127.0.0.1:{port}{path}"))

    async def go() -> None:
        async with await ToolClient.connect(mesh) as client:
            await tools_named(client, "web.echo", "web.trigger-long-running-operation")
            echoed = await client.call("web.echo", {"message": "over http"})
            assert echoed["text"] == "Echo: over http"
            reports: list[Any] = []
            await client.call(
                "web.trigger-long-running-operation",
                {"duration": 1, "steps": 3},
                on_progress=reports.append,
            )
            assert [r["progress"] for r in reports] == [1.0, 2.0, 3.0]

    asyncio.run(go())


def test_http_session_lost_is_initialized_again(
    mesh: str, spawn: Callable[..., Any], tmp_path: Path
) -> None:
    """A Streamable HTTP server restarted under the bridge forgets its sessions (404
    for the old Mcp-Session-Id): the next call initializes a new one and succeeds."""
    port = free_port()
    command = [sys.executable, str(Path(__file__).parent / "servers" / "probe.py")]

    def start() -> Any:
        server = spawn(*command, "streamable-http", str(port))
        server.wait_line("Uvicorn running", timeout=30)
        return server

    server = start()
    config = http_server("web", f"http://127.0.0.1:{port}/mcp", protocol="legacy")
    attach(spawn, mesh, tmp_path, config)

    async def go() -> None:
        async with await ToolClient.connect(mesh) as client:
            await tools_named(client, "web.pid")
            first = (await client.call("web.pid", {}))["structured"]["result"]
            await asyncio.to_thread(server.kill)  # the loop keeps the broker's heartbeat
            await asyncio.to_thread(start)
            second = (await client.call("web.pid", {}, timeout=20))["structured"]["result"]
            assert second != first

    asyncio.run(go())


def test_no_orphans_when_the_bridge_is_killed(
    mesh: str, spawn: Callable[..., Any], tmp_path: Path
) -> None:
    """SIGKILL to `loom mcp attach`: its stdio servers (node and python, with any
    children) end too."""
    config = stdio_server("time", TIME) + stdio_server("every", [str(everything()), "stdio"])
    proc = attach(spawn, mesh, tmp_path, config)

    async def ready() -> None:
        async with await ToolClient.connect(mesh) as client:
            await tools_named(client, "time.get_current_time", "every.echo")

    asyncio.run(ready())
    servers = descendants(proc.pid)
    commands = " ".join(" ".join(p.cmdline()) for p in servers)
    assert "mcp_server_time" in commands and "mcp-server-everything" in commands
    os.kill(proc.pid, signal.SIGKILL)
    assert wait_for(lambda: not any(p.is_running() and p.status() != "zombie" for p in servers))


def test_a_graceful_stop_ends_the_servers(
    mesh: str, spawn: Callable[..., Any], tmp_path: Path
) -> None:
    proc = attach(spawn, mesh, tmp_path, stdio_server("every", [str(everything()), "stdio"]))

    async def ready() -> None:
        async with await ToolClient.connect(mesh) as client:
            await tools_named(client, "every.echo")

    asyncio.run(ready())
    servers = descendants(proc.pid)
    assert servers
    assert proc.stop() == 0
    assert wait_for(lambda: not any(p.is_running() and p.status() != "zombie" for p in servers))


def test_a_sandboxed_stdio_server_cannot_write_outside_its_jail(
    mesh: str, spawn: Callable[..., Any], tmp_path: Path
) -> None:
    """`sandbox = {}`: the server runs in bubblewrap; the host is read-only but the
    jail, so a write outside fails as the server's error; inside, it lands."""
    outside = ROOT / ".cache" / f"sandbox-outside-{os.getpid()}"  # not under /tmp
    outside.mkdir(parents=True, exist_ok=True)
    jail = tmp_path / "jail"
    config = probe(sandbox={"fs": {"jail": str(jail)}})
    attach(spawn, mesh, tmp_path, config)

    async def go() -> None:
        async with await ToolClient.connect(mesh) as client:
            tools = await tools_named(client, "probe.write")
            assert tools["probe.write"].workers == ["bridge"]
            with pytest.raises(ToolFailedError):
                await client.call("probe.write", {"path": str(outside / "x"), "text": "no"})
            await client.call("probe.write", {"path": str(jail / "y"), "text": "yes"})

    try:
        asyncio.run(go())
        assert not (outside / "x").exists()
    finally:
        shutil.rmtree(outside, ignore_errors=True)
    assert (jail / "y").read_text() == "yes"


def test_sampling_not_supported_unless_a_topic_answers(
    mesh: str, spawn: Callable[..., Any], tmp_path: Path
) -> None:
    """A server's sampling request is answered "not supported" (the call does not
    hang); with `sampling = TOPIC`, an actor's reply on that topic is the answer."""
    config = probe(protocol="legacy") + probe("sampled", protocol="legacy", sampling="llm.sample")
    attach(spawn, mesh, tmp_path, config)

    async def go() -> None:
        async with await ToolClient.connect(mesh) as client:
            await tools_named(client, "probe.sample", "sampled.sample")
            with pytest.raises(ToolFailedError):
                await client.call("probe.sample", {"prompt": "hello"}, timeout=10)

            asked: list[Event] = []

            class Model(Actor):
                async def answer(self, event: Event) -> dict[str, Any]:
                    asked.append(event)
                    text = event.data["messages"][0]["content"]["text"]
                    return {
                        "role": "assistant",
                        "content": {"type": "text", "text": f"you said {text}"},
                        "model": "mesh-model",
                    }

            model = Model(name="model", broker=mesh)
            await model.subscribe("llm.sample", model.answer)
            await model.start()
            try:
                answer = await client.call("sampled.sample", {"prompt": "hi"}, timeout=10)
            finally:
                await model.stop()
            assert answer["text"] == "you said hi"
            assert asked[0].data["server"] == "sampled"

    asyncio.run(go())


def test_approval_and_tool_selection_from_the_config(
    mesh: str, spawn: Callable[..., Any], tmp_path: Path
) -> None:
    """`tools` patterns choose what the mesh gets; per-tool overrides set approval and
    the lease; resources/prompts can be left out."""
    config = probe(
        tools=["pid", "slow", "tick"],
        resources=False,
        prompts=False,
        tool={"slow": {"approval": True, "timeout": 7.5}},
    )
    attach(spawn, mesh, tmp_path, config)

    async def go() -> None:
        async with await ToolClient.connect(mesh) as client:
            tools = await tools_named(client, "probe.pid", "probe.slow", "probe.tick")
            names = {name for name in tools if name.startswith("probe.")}
            assert names == {"probe.pid", "probe.slow", "probe.tick"}
            assert tools["probe.slow"].approval and tools["probe.slow"].timeout == 7.5
            assert not tools["probe.pid"].approval

    asyncio.run(go())


def test_the_agent_loop_calls_an_mcp_tool(
    mesh: str, spawn: Callable[..., Any], tmp_path: Path
) -> None:
    """A cognitive actor (the scripted LLM on loopback) sees time.get_current_time among
    its tools, calls it, and answers from the observation."""
    attach(spawn, mesh, tmp_path, stdio_server("time", TIME))

    async def listed() -> None:
        async with await ToolClient.connect(mesh) as client:
            await tools_named(client, "time.get_current_time")

    asyncio.run(listed())
    call = {"name": "time__get_current_time", "arguments": '{"timezone": "Asia/Tokyo"}'}
    script = [
        {"reply": {"content": "Let me look.", "tool_calls": [call]}},
        {
            "expect": {"last_role": "tool", "contains": "Asia/Tokyo"},
            "reply": {"content": "It is daytime somewhere."},
        },
    ]
    with ScriptedLLM(script) as llm:
        thinker = ACTORS / "thinker.py"
        proc = spawn(
            sys.executable,
            str(thinker),
            mesh,
            llm.base_url,
            "thinker",
            env={"THINKER_TOOLS": "time.*"},
        )
        proc.wait_line("actor started")

        async def ask() -> Any:
            actor = Actor(name="asker", broker=mesh)
            await actor.start()
            try:
                return await actor.request(
                    "agent.thinker.task", {"task": "What time is it in Tokyo?"}, timeout=40
                )
            finally:
                await actor.stop()

        result = asyncio.run(ask())
        assert result["status"] == "answered", result
        assert result["answer"] == "It is daytime somewhere."
        offered = [t["function"]["name"] for t in llm.requests[0]["tools"]]
        assert "time__get_current_time" in offered
        assert llm.remaining == 0


def test_mcp_server_fetch_reads_a_loopback_page(
    mesh: str, spawn: Callable[..., Any], tmp_path: Path
) -> None:
    """PyPI's mcp-server-fetch, attached over stdio, fetches a page from a loopback HTTP
    server (no outside network) and returns it as markdown text."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(
        "<html><head><title>Loom page</title></head><body><h1>Hello from loopback</h1>"
        "<p>The mesh fetched this.</p></body></html>"
    )
    port = free_port()
    web = spawn(
        sys.executable,
        "-m",
        "http.server",
        str(port),
        "--bind",
        "127.0.0.1",
        "--directory",
        str(site),
    )
    web.wait_line("Serving HTTP", timeout=15)
    fetch = [sys.executable, "-m", "mcp_server_fetch", "--ignore-robots-txt", "--allow-private-ips"]
    attach(spawn, mesh, tmp_path, stdio_server("fetch", fetch))

    async def go() -> None:
        async with await ToolClient.connect(mesh) as client:
            tools = await tools_named(client, "fetch.fetch")
            assert "url" in tools["fetch.fetch"].schema_["properties"]
            page = await client.call("fetch.fetch", {"url": f"http://127.0.0.1:{port}/"})
            assert "Hello from loopback" in page["text"]

    asyncio.run(go())


def test_rights_apply_to_mcp_tools_by_name(
    spawn: Callable[..., Any], tmp_path: Path, short_tmp: Path
) -> None:
    """An identity the ACL lets call `time.*` only: its directory lists those tools
    alone (so does `loom mcp serve` run with its key), and calling another server's
    tool is DENIED."""
    new_keypair("alice", short_tmp)
    acl = short_tmp / "acl.toml"
    acl.write_text(
        '[identities.alice]\nkey_file = "alice.key"\ncall = ["time.*"]\nread = ["directory"]\n'
    )
    broker = free_tcp_endpoint()
    start_broker(spawn, broker, "--acl", str(acl), "--audit-log", "off")
    attach(spawn, broker, tmp_path, stdio_server("time", TIME) + probe())
    alice = short_tmp / "alice.key_secret"

    async def go() -> None:
        async with await ToolClient.connect(broker) as owner:
            await tools_named(owner, "time.get_current_time", "probe.pid")
        async with await ToolClient.connect(broker, key=alice) as client:
            names = {tool.name for tool in (await client.directory()).tools}
            assert "time.get_current_time" in names
            assert not any(name.startswith("probe.") for name in names)
            now = await client.call("time.get_current_time", {"timezone": "UTC"})
            assert now["structured"]["timezone"] == "UTC"
            with pytest.raises(ToolDeniedError):
                await client.call("probe.pid", {})
        server = StdioServerParameters(
            command=sys.executable,
            args=["-m", "loom.cli.main", "mcp", "serve", "--broker", broker, "--key", str(alice)],
            env={"LOOM_HOME": os.environ["LOOM_HOME"], "TMPDIR": os.environ["TMPDIR"]},
        )
        async with Client(server, cache=None) as mcp_client:
            offered = {tool.name for tool in (await mcp_client.list_tools()).tools}
            assert "time.get_current_time" in offered and "probe.pid" not in offered

    asyncio.run(go())


def test_a_paginated_tool_list_is_read_to_the_end(
    mesh: str, spawn: Callable[..., Any], tmp_path: Path
) -> None:
    """A server listing 7 tools 3 a page: every page is read, every tool is served."""
    paged = [sys.executable, str(Path(__file__).parent / "servers" / "paged.py")]
    attach(spawn, mesh, tmp_path, stdio_server("paged", paged))

    async def go() -> None:
        async with await ToolClient.connect(mesh) as client:
            names = [f"paged.tool{index}" for index in range(7)]
            await tools_named(client, *names)
            assert (await client.call("paged.tool6", {}))["text"] == "tool6 called"

    asyncio.run(go())


def test_loom_served_over_http_attached_back_with_headers(
    mesh: str, spawn: Callable[..., Any], tmp_path: Path
) -> None:
    """The mesh's own MCP server (`loom mcp serve --transport http`, bearer token)
    attached by URL with an Authorization header from the environment: the sample
    worker's tools come back as loop.sample.*; without the header the server refuses
    and the bridge keeps trying."""
    start_worker(spawn, mesh, "w1")
    port = free_port()
    serve = [sys.executable, "-m", "loom.cli.main", "mcp", "serve", "--broker", mesh]
    server = spawn(*serve, "--transport", "http", "--port", str(port), "--tools", "sample.*")
    server.wait_line("serving the mesh over MCP", timeout=30)
    url = f"http://127.0.0.1:{port}/mcp"
    config = http_server("loop", url, headers_env={"Authorization": "LOOM_TEST_MCP_AUTH"})
    config += http_server("refused", url, transport="http", connect_timeout=5)
    token = dashboard_token()
    os.environ["LOOM_TEST_MCP_AUTH"] = f"Bearer {token}"
    try:
        proc = attach(spawn, mesh, tmp_path, config)
    finally:
        del os.environ["LOOM_TEST_MCP_AUTH"]

    async def go() -> None:
        async with await ToolClient.connect(mesh) as client:
            await tools_named(client, "loop.sample.add")
            total = await client.call("loop.sample.add", {"a": 20, "b": 22})
            assert total["text"] == "42" and total["structured"] is None

    asyncio.run(go())
    proc.wait_line("mcp server unavailable", timeout=30)
    assert "server=refused" in proc.output


def test_elicitation_goes_to_a_mesh_topic(
    mesh: str, spawn: Callable[..., Any], tmp_path: Path
) -> None:
    """`elicitation = TOPIC`: the bridge declares the capability (server-everything then
    offers trigger-elicitation-request), and the server's elicitation/create becomes a
    mesh request answered by an actor: here, the user accepts and gives a name."""
    config = stdio_server("every", [str(everything()), "stdio"], elicitation="ask.user")
    attach(spawn, mesh, tmp_path, config)

    async def go() -> None:
        asked: list[Event] = []

        class User(Actor):
            async def answer(self, event: Event) -> dict[str, Any]:
                asked.append(event)
                return {"action": "accept", "content": {"name": "Ada", "check": True}}

        user = User(name="user", broker=mesh)
        await user.subscribe("ask.user", user.answer)
        await user.start()
        try:
            async with await ToolClient.connect(mesh) as client:
                await tools_named(client, "every.trigger-elicitation-request")
                result = await client.call("every.trigger-elicitation-request", {}, timeout=20)
        finally:
            await user.stop()
        assert "User provided the requested information" in result["text"]
        assert "Ada" in result["text"]
        assert asked[0].data["server"] == "every"
        assert "name" in asked[0].data["requestedSchema"]["properties"]

    asyncio.run(go())
