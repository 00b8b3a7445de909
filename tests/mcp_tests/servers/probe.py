"""A real MCP server (the official SDK's MCPServer) with tools the bridge's tests need:
its pid, a slow call that records its cancellation, progress, tools added and removed
at run time, a file write (for the sandbox), a sampling request back to the client.

``python probe.py [stdio | streamable-http PORT]``
"""

import os
import sys
from pathlib import Path

import anyio
import mcp_types as types
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("probe")


@server.tool()
def pid() -> int:
    """This server's process id."""
    return os.getpid()


@server.tool()
async def slow(seconds: float, marker: str) -> str:
    """Write 'started' to ``marker``, sleep; write 'cancelled' there if the client
    cancels first."""
    Path(marker).write_text("started")
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        Path(marker).write_text("cancelled")
        raise
    return "done"


@server.tool()
async def tick(steps: int, every: float, ctx: Context) -> str:
    """Report progress ``steps`` times, ``every`` seconds apart."""
    for step in range(steps):
        await anyio.sleep(every)
        await ctx.report_progress(step + 1, steps, f"step {step + 1}")
    return f"{steps} steps"


@server.tool()
async def grow(name: str, ctx: Context) -> str:
    """Add a tool called ``name`` and announce the change."""

    def added() -> str:
        return f"{name} here"

    server.add_tool(added, name=name, description="added at run time")
    await ctx.notify_tools_changed()
    return "grown"


@server.tool()
async def shrink(name: str, ctx: Context) -> str:
    """Remove the tool ``name`` and announce the change."""
    server.remove_tool(name)
    await ctx.notify_tools_changed()
    return "shrunk"


@server.tool()
def write(path: str, text: str) -> str:
    """Write ``text`` to ``path``."""
    Path(path).write_text(text)
    return "written"


@server.tool()
async def sample(prompt: str, ctx: Context) -> str:
    """Ask the client's model (sampling/createMessage) and return its text."""
    message = types.SamplingMessage(role="user", content=types.TextContent(text=prompt))
    result = await ctx.session.create_message([message], max_tokens=50)
    content = result.content
    return content.text if isinstance(content, types.TextContent) else str(content)


@server.tool()
def fail(why: str) -> str:
    """Fail with ``why``."""
    raise ValueError(why)


if __name__ == "__main__":
    if sys.argv[1:2] == ["streamable-http"]:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
