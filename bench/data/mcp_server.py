"""The MCP server bench/mcp.py measures: the official SDK's MCPServer with one tool that
adds two integers. ``python mcp_server.py [stdio | http PORT]``"""

import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("bench")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


if __name__ == "__main__":
    if sys.argv[1:2] == ["http"]:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
