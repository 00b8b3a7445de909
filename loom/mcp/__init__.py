"""MCP both ways: MCP servers' tools served on the mesh (:class:`McpBridge`), and the
mesh's tools served to MCP clients (:func:`serve_mesh`). Needs the ``mcp`` extra
(``pip install 'loom-mesh[mcp]'``); :class:`McpSettings` alone does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loom.mcp._settings import McpServerSettings, McpSettings, McpToolSettings

if TYPE_CHECKING:
    from loom.mcp._bridge import McpBridge, mesh_name
    from loom.mcp._serve import MeshServer, serve_mesh

__all__ = [
    "McpBridge",
    "McpServerSettings",
    "McpSettings",
    "McpToolSettings",
    "MeshServer",
    "mesh_name",
    "serve_mesh",
]

_LAZY = {
    "McpBridge": "loom.mcp._bridge",
    "mesh_name": "loom.mcp._bridge",
    "MeshServer": "loom.mcp._serve",
    "serve_mesh": "loom.mcp._serve",
}


def __getattr__(name: str) -> Any:
    """The parts that need the MCP SDK, imported on first use, with a clear error when
    the extra is missing."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'loom.mcp' has no attribute {name!r}")
    try:
        import mcp  # noqa: F401
    except ImportError as exc:
        from loom.errors import ConfigError

        raise ConfigError("the MCP SDK is not installed: pip install 'loom-mesh[mcp]'") from exc
    import importlib

    return getattr(importlib.import_module(module), name)
