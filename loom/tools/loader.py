"""Find the tools a ``loom worker PATH_OR_MODULE[:attr]`` command names."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from loom.errors import ToolDefinitionError
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
    module = _import(where)
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


def _import(where: str) -> ModuleType:
    if where.endswith(".py") or "/" in where:
        path = Path(where)
        name = path.stem
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None or not path.is_file():
            raise ToolDefinitionError(f"{where}: no such Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise ToolDefinitionError(f"{where}: import failed: {exc!r}") from exc
        return module
    try:
        return importlib.import_module(where)
    except Exception as exc:
        raise ToolDefinitionError(f"{where}: import failed: {exc!r}") from exc
