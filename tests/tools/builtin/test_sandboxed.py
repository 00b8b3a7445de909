"""The built-in tools served by a real ``loom worker loom.tools.builtin:TOOLS``: each call
runs in the sandbox launcher (seccomp, Landlock, namespaces where the host has them)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import Proc, free_tcp_endpoint, start_broker, start_worker

from loom import ToolClient
from loom.errors import ToolFailedError


class Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


def test_builtin_tools_work_in_the_sandbox(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    """Files, commands (with a timeout), HTTP on loopback (a config override) and the
    clock work under the sandbox; a symlink out is still refused by the tool."""
    jail, outside = tmp_path / "jail", tmp_path / "outside"
    jail.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("top secret\n")
    (jail / "link").symlink_to(outside / "secret")
    config = tmp_path / "loom.toml"
    config.write_text('[tools."http.fetch".sandbox.net]\nmode = "loopback"\n')
    endpoint = free_tcp_endpoint()
    broker = start_broker(spawn, endpoint)
    start_worker(
        spawn,
        endpoint,
        "builtin",
        "--jail",
        str(jail),
        "--config",
        str(config),
        target="loom.tools.builtin:TOOLS",
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"

    async def calls() -> dict[str, Any]:
        async with await ToolClient.connect(endpoint, name="builtin-test") as client:

            async def call(tool: str, **args: Any) -> Any:
                return await client.call(tool, args, timeout=30)

            await call("fs.write", path="dir/a.txt", content="b\na\n", make_dirs=True)
            results = {
                "read": await call("fs.read", path="dir/a.txt"),
                "sort": await call("shell.run", argv=["sort", "dir/a.txt"]),
                "sleep": await call("shell.run", argv=["sleep", "30"], timeout=0.5),
                "fetch": await call("http.fetch", url=url),
                "now": await call("time.now", tz="UTC"),
            }
            with pytest.raises(ToolFailedError) as caught:
                await call("fs.read", path="link")
            results["link"] = caught.value.type_name
            return results

    try:
        results = asyncio.run(calls())
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert results["read"]["content"] == "b\na\n"
    assert results["sort"]["stdout"] == "a\nb\n"
    assert (results["sleep"]["timed_out"], results["sleep"]["exit_code"]) == (True, -9)
    assert results["fetch"]["content"] == "hello"
    assert results["now"]["timezone"] == "UTC"
    assert results["link"] == "PathEscapeError"
    assert (outside / "secret").read_text() == "top secret\n"
    assert broker.popen.poll() is None
