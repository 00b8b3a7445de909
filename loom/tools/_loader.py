"""Find the tools a ``loom worker PATH_OR_MODULE[:attr]`` command names."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from loom._loader import import_target
from loom.errors import ToolDefinitionError
from loom.tools._tool import Tool
from loom.tools.sandbox._policy import Sandbox

if TYPE_CHECKING:
    from loom.tools._config import ToolSettings

__all__ = ["configure_tools", "load_tools"]


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


def configure_tools(
    tools: Iterable[Tool], overrides: Mapping[str, ToolSettings], *, sandbox_all: bool = False
) -> list[Tool]:
    """Copies of ``tools`` with the configuration's ``[tools."NAME"]`` overrides applied
    (sandbox sections key by key, approval); with ``sandbox_all``, tools that declare no
    policy get the default one. Overrides for tools not in ``tools`` are ignored (one
    file may configure several workers)."""
    configured: list[Tool] = []
    for item in tools:
        override = overrides.get(item.name)
        policy = item.sandbox or (Sandbox() if sandbox_all else None)
        if override is not None and override.sandbox is not None:
            policy = (policy or Sandbox()).merged(override.sandbox)
        approval = item.approval
        if override is not None and override.approval is not None:
            approval = override.approval
        if policy is item.sandbox and approval == item.approval:
            configured.append(item)
            continue
        changed = copy.copy(item)
        changed.sandbox, changed.approval = policy, approval
        configured.append(changed)
    return configured
