"""What MCP answers become on the mesh: results as one documented shape, errors as codes.

A tool's result is a map (``docs/mcp.md``)::

    {"text": "...",          # the text items, joined by blank lines ("" if none)
     "content": [...],       # every content item, MCP's fields in snake_case
     "structured": {...}}    # structuredContent, or None

Binary data (images, audio, blobs) stays base64 text, as MCP sends it: the result is
JSON, for ``loom call`` and for language models alike.
"""

from __future__ import annotations

from typing import Any

import mcp_types as types
from mcp.shared.exceptions import MCPError

from loom.errors import ToolError, ToolFailedError, tool_error

__all__ = ["content_items", "mcp_failure", "tool_result"]

_CODES = {
    types.INVALID_PARAMS: "INVALID_PARAMS",
    types.METHOD_NOT_FOUND: "UNKNOWN_TOOL",
    types.REQUEST_TIMEOUT: "TIMEOUT",
    types.CONNECTION_CLOSED: "WORKER_LOST",
}
"""JSON-RPC error codes with a Loom code of their own; the others are TOOL_ERROR."""


def content_items(items: list[Any]) -> list[dict[str, Any]]:
    """MCP content blocks as plain maps (``mime_type``, not ``mimeType``)."""
    return [item.model_dump(mode="json", exclude_none=True) for item in items]


def joined_text(items: list[Any]) -> str:
    return "\n\n".join(item.text for item in items if isinstance(item, types.TextContent))


def tool_result(result: types.CallToolResult, tool: str) -> dict[str, Any]:
    """A ``tools/call`` result as the mesh returns it.

    Raises:
        ToolFailedError: the server said ``isError``; the message is its text.
    """
    text = joined_text(result.content)
    if result.is_error:
        message = text or "the MCP tool reported an error and said nothing more"
        details = {"type": "McpToolError", "remote_message": message[:4096]}
        raise ToolFailedError(f"McpToolError: {message[:4096]}", tool=tool, details=details)
    return {
        "text": text,
        "content": content_items(result.content),
        "structured": result.structured_content,
    }


def mcp_failure(exc: MCPError, tool: str) -> ToolError:
    """A JSON-RPC error from the server as the ``ToolError`` of its Loom code."""
    code = _CODES.get(exc.error.code, "TOOL_ERROR")
    message = f"MCP error {exc.error.code}: {exc.error.message}"[:4096]
    details: dict[str, Any] = {"mcp_code": exc.error.code}
    if code == "TOOL_ERROR":
        details.update(type="McpError", remote_message=exc.error.message[:4096])
    return tool_error(code, message, tool=tool, details=details)
