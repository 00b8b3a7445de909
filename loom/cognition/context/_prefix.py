"""The byte-stable start of every request: the system prompt, the task and the tool list
rendered the same way each time, so a provider's prompt cache keeps hitting.

Nothing here adds a timestamp, a counter or anything else that changes between calls;
dict keys are sorted and tools come in name order, whatever order they were given in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from loom.cognition._messages import wire_name
from loom.cognition.context._model import canonical_json
from loom.errors import ToolListError

__all__ = ["ToolListError", "canonical_json", "stable_prefix", "stable_tools", "wire_name"]


def stable_prefix(system_prompt: str, task: str) -> list[dict[str, Any]]:
    """The first two messages of every prompt: the system prompt and the task, with
    line endings normalized to ``\\n`` and nothing else changed.

    Args:
        system_prompt: the agent's instructions.
        task: what the agent was asked to do.
    """
    return [
        {"role": "system", "content": _lines(system_prompt)},
        {"role": "user", "content": _lines(task)},
    ]


def stable_tools(tools: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The request's ``tools`` list in a canonical form: sorted by name, every map's keys
    sorted (lists keep their order), so any JSON encoder gives the same bytes.

    Args:
        tools: chat API tools (``{"type": "function", "function": {...}}``) or Loom tool
            specs (``{"name", "description", "schema"}``, Loom names), in any order.

    Raises:
        ToolListError: two tools have the same name.
    """
    rendered = []
    for tool in tools:
        if "function" in tool:
            rendered.append(_sorted(dict(tool)))
        else:
            function = {
                "description": str(tool.get("description") or "").strip(),
                "name": wire_name(str(tool["name"])),
                "parameters": tool.get("schema") or {"type": "object", "properties": {}},
            }
            rendered.append(_sorted({"function": function, "type": "function"}))
    rendered.sort(key=lambda tool: (str(tool["function"].get("name")), canonical_json(tool)))
    names = [tool["function"].get("name") for tool in rendered]
    duplicates = sorted({str(name) for name in names if names.count(name) > 1})
    if duplicates:
        raise ToolListError(f"tools listed twice: {', '.join(duplicates)}")
    return rendered


def _sorted(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list | tuple):
        return [_sorted(item) for item in value]
    return value


def _lines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")
