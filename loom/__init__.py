"""Loom: a runtime for long-running AI agents that live as processes on a ZeroMQ mesh.

What a script writes: ``Actor``, ``on`` and ``Event`` for actors; ``tool``, ``Tool``,
``ToolContext``, ``Worker`` and ``Sandbox`` for tools; ``ToolClient`` to call tools from
anywhere; the errors a script most often catches. Every error is in :mod:`loom.errors`,
the broker in :mod:`loom.broker`, the wire format in :mod:`loom.protocol`.

The names are imported when first used, so ``import loom.broker`` (or any other part)
loads only what that part needs, not the actor and sandbox stacks.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from loom.errors import LoomError, RemoteError, RequestTimeoutError, ToolError
from loom.protocol import VERSION as PROTOCOL_VERSION

if TYPE_CHECKING:
    from loom.actor import Actor, Event, on
    from loom.session import Directory, ToolClient
    from loom.tools import Tool, ToolContext, Worker, tool
    from loom.tools.sandbox import Sandbox

__version__ = "0.1.0"

__all__ = [
    "PROTOCOL_VERSION",
    "Actor",
    "Directory",
    "Event",
    "LoomError",
    "RemoteError",
    "RequestTimeoutError",
    "Sandbox",
    "Tool",
    "ToolClient",
    "ToolContext",
    "ToolError",
    "Worker",
    "__version__",
    "on",
    "tool",
]

_LAZY = {
    "Actor": "loom.actor",
    "Event": "loom.actor",
    "on": "loom.actor",
    "Directory": "loom.session",
    "ToolClient": "loom.session",
    "Tool": "loom.tools",
    "ToolContext": "loom.tools",
    "Worker": "loom.tools",
    "tool": "loom.tools",
    "Sandbox": "loom.tools.sandbox",
}
"""Public names and the package each comes from, imported on first use."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'loom' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
