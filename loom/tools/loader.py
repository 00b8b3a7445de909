"""Find the tools a ``loom worker PATH_OR_MODULE[:attr]`` command names."""

from __future__ import annotations

from typing import Any

from loom.errors import ToolDefinitionError
from loom.loader import import_target
from loom.tools.tool import Tool

__all__ = ["load_tools"]


def load_tools(target: str) -> list[Tool]:
    """The tools in a Python file or module: every module-level ``@tool``, or those
    ``:attr`` names (a tool, or a list of them).

    Raises:
        ToolDefinitionError: the file or module cannot be imported, the attribute is
            missing, or no tool is found.
    """
    where, _, attr = target.partition(":")
    module = import_target(where, ToolDefinitionError)
    if attr:
        try:
            found: Any = getattr(module, attr)
        except AttributeError:
            raise ToolDefinitionError(f"{where} has no attribute {attr!r}") from None
        items = list(found) if isinstance(found, list | tuple) else [found]
        bad = [item for item in items if not isinstance(item, Tool)]
        if bad:
            raise ToolDefinitionError(f"{target}: {bad[0]!r} is not a @tool function")
        tools: list[Tool] = items
    else:
        tools = [value for value in vars(module).values() if isinstance(value, Tool)]
    if not tools:
        raise ToolDefinitionError(f"{target}: no @tool functions found")
    return tools
