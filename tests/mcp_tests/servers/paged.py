"""A real MCP server (the SDK's low-level Server) whose tools/list is paginated: 7 tools,
3 a page, so a client must follow nextCursor to see them all."""

import anyio
import mcp_types as types
from mcp.server.lowlevel.server import Server
from mcp.server.stdio import stdio_server

NAMES = [f"tool{index}" for index in range(7)]
PAGE = 3


async def list_tools(
    ctx: object, params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    start = int(params.cursor) if params is not None and params.cursor else 0
    page = NAMES[start : start + PAGE]
    tools = [types.Tool(name=name, input_schema={"type": "object"}) for name in page]
    following = start + PAGE
    return types.ListToolsResult(
        tools=tools, next_cursor=str(following) if following < len(NAMES) else None
    )


async def call_tool(ctx: object, params: types.CallToolRequestParams) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=f"{params.name} called")])


server = Server("paged", on_list_tools=list_tools, on_call_tool=call_tool)


async def main() -> None:
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
