"""Per-tool reduction of observations: what the model needs of a result, as text.

A :class:`Reducers` registry maps tool-name patterns (``fnmatch``, ``fs.*``) to reducer
functions; the most recently registered matching pattern wins, and results no pattern
matches (or of an unexpected shape) go through the generic JSON reducer. Every reducer
is deterministic: the same result gives the same text.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from loom.cognition.context._model import ReducerError, Step
from loom.cognition.context._text import cap, html_to_text, trim_lines

__all__ = ["Limits", "Reducer", "Reducers", "reduce_json"]

Reducer = Callable[[Step], str]
"""Turns a step (its ``result``; ``error`` is handled before) into observation text."""


@dataclass(frozen=True, slots=True)
class Limits:
    """How much of a result the default reducers keep.

    Attributes:
        head: first lines kept of long command output and page text.
        tail: last lines kept of them.
        line_chars: characters kept of one line.
        entries: directory entries listed (the rest are counted).
        items: items kept of a JSON list (the rest are counted).
        string_chars: characters kept of a JSON string.
        body_chars: characters kept of an HTTP body after reduction.
    """

    head: int = 30
    tail: int = 15
    line_chars: int = 300
    entries: int = 50
    items: int = 10
    string_chars: int = 300
    body_chars: int = 3000


class Reducers:
    """The reducer for each tool, by name pattern.

    Args:
        limits: how much the default reducers keep.
        defaults: start with the default reducers (``fs.read``, ``fs.list``,
            ``shell.run``, ``http.fetch``, ``context.read``).
    """

    def __init__(self, limits: Limits | None = None, *, defaults: bool = True) -> None:
        self.limits = limits or Limits()
        self._rules: list[tuple[str, Reducer]] = []
        if defaults:
            for pattern, fn in _DEFAULTS.items():
                self.register(pattern, partial(fn, limits=self.limits))

    def register(self, pattern: str, reducer: Reducer) -> None:
        """Reduce the results of tools matching ``pattern`` with ``reducer``; it takes
        precedence over every rule registered before.

        Args:
            pattern: a Loom tool name or an ``fnmatch`` pattern (``fs.*``).
            reducer: returns the observation text for a step.
        """
        self._rules.append((pattern, reducer))

    def match(self, tool: str) -> Reducer:
        """The reducer for ``tool``: the last registered match, else the generic one."""
        for pattern, reducer in reversed(self._rules):
            if fnmatch.fnmatchcase(tool, pattern):
                return reducer
        return partial(_generic, limits=self.limits)

    def reduce(self, step: Step) -> str:
        """The observation text for ``step``: its error, or its result reduced.

        Raises:
            ReducerError: the reducer raised (the original is the ``__cause__``).
        """
        if step.error is not None:
            text = trim_lines(step.error, self.limits.head, self.limits.tail, 1000)
            return f"error: {text}"
        reducer = self.match(step.tool)
        try:
            return reducer(step)
        except Exception as exc:
            message = f"reducer for {step.tool} failed on step {step.index}: {exc!r}"
            raise ReducerError(message) from exc


def reduce_json(value: Any, limits: Limits) -> Any:
    """``value`` without null or empty fields, its lists cut to ``limits.items`` (a last
    item counts the rest) and its strings to ``limits.string_chars``."""
    if isinstance(value, dict):
        kept = {k: reduce_json(v, limits) for k, v in value.items() if not _empty(v)}
        return {k: v for k, v in kept.items() if not _empty(v)}
    if isinstance(value, list):
        items = [reduce_json(v, limits) for v in value[: limits.items]]
        if len(value) > limits.items:
            items.append(f"… {len(value) - limits.items:,} more items")
        return items
    if isinstance(value, str):
        if "\n" in value:
            value = trim_lines(value, limits.head, limits.tail, limits.line_chars)
        return cap(value, limits.string_chars)
    return value


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | dict) and not value)


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _generic(step: Step, *, limits: Limits) -> str:
    reduced = reduce_json(step.result, limits)
    return reduced if isinstance(reduced, str) else _dump(reduced)


def _fs_read(step: Step, *, limits: Limits) -> str:
    result = step.result
    if not isinstance(result, dict) or "content" not in result:
        return _generic(step, limits=limits)
    path = result.get("path", step.arguments.get("path", "?"))
    size = result.get("size")
    parts = [f"{size:,} bytes"] if isinstance(size, int) else []
    if result.get("truncated"):
        start = int(step.arguments.get("offset", 0))
        end = start + int(result.get("bytes", 0))
        parts.append(f"bytes {start:,}-{end:,} shown, read on with offset={end}")
    header = f"{path} ({'; '.join(parts)})" if parts else str(path)
    content = result.get("content")
    if not isinstance(content, str):
        return f"{header}\n[binary content, base64 left out]"
    return f"{header}\n{content}"


_MARKS = {"dir": "/", "symlink": "@", "other": "?"}


def _fs_list(step: Step, *, limits: Limits) -> str:
    result = step.result
    entries = result.get("entries") if isinstance(result, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        return _generic(step, limits=limits)
    kinds: dict[str, int] = {}
    for entry in entries:
        kind = str(entry.get("type", "file"))
        kinds[kind] = kinds.get(kind, 0) + 1
    counts = ", ".join(f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in sorted(kinds.items()))
    names = [f"{e.get('name')}{_MARKS.get(str(e.get('type')), '')}" for e in entries]
    if len(names) > limits.entries:
        tail = max(1, limits.entries // 5)
        head = limits.entries - tail
        names = [*names[:head], f"… {len(names) - head - tail:,} more …", *names[-tail:]]
    path = result.get("path", step.arguments.get("path", "."))
    more = " (listing truncated by the tool)" if result.get("truncated") else ""
    return f"{path}: {len(entries):,} entries ({counts}){more}\n" + "\n".join(names)


def _shell_run(step: Step, *, limits: Limits) -> str:
    result = step.result
    if not isinstance(result, dict) or "exit_code" not in result:
        return _generic(step, limits=limits)
    status = f"exit {result['exit_code']}"
    if result.get("timed_out"):
        status += " (timed out)"
    if result.get("truncated"):
        status += " (output cut by the tool)"
    parts = [status]
    for stream in ("stdout", "stderr"):
        text = result.get(stream)
        if isinstance(text, str) and text.strip():
            lines = len(text.splitlines())
            trimmed = trim_lines(text.rstrip("\n"), limits.head, limits.tail, limits.line_chars)
            parts.append(f"{stream} ({lines:,} lines):\n{trimmed}")
    return "\n".join(parts)


def _http_fetch(step: Step, *, limits: Limits) -> str:
    result = step.result
    if not isinstance(result, dict) or "status" not in result:
        return _generic(step, limits=limits)
    headers = result.get("headers")
    if not isinstance(headers, dict):
        headers = {}
    kind = str(headers.get("content-type", "")).split(";")[0].strip().lower()
    head = f"HTTP {result['status']} {kind or '(no content-type)'} {result.get('url', '')}"
    for name in ("location", "retry-after"):
        if name in headers:
            head += f"\n{name}: {headers[name]}"
    body = result.get("content")
    if not isinstance(body, str):
        return f"{head}\n[binary body, base64 left out]"
    if result.get("truncated"):
        head += " (body cut by the tool)"
    text = _body_text(body, kind, limits)
    return f"{head}\n{cap(text, limits.body_chars)}" if text else head


def _body_text(body: str, kind: str, limits: Limits) -> str:
    if kind == "application/json" or kind.endswith("+json"):
        try:
            return _dump(reduce_json(json.loads(body), limits))
        except ValueError:
            pass
    if "html" in kind or body.lstrip()[:15].lower().startswith(("<!doctype", "<html")):
        body = html_to_text(body)
    return trim_lines(body.strip(), limits.head, limits.tail, limits.line_chars)


def _context_read(step: Step, *, limits: Limits) -> str:
    result = step.result
    if not isinstance(result, dict) or not isinstance(result.get("content"), str):
        return _generic(step, limits=limits)
    start = int(result.get("offset", 0))
    end = start + len(result["content"])
    size = result.get("size")
    total = f"{size:,}" if isinstance(size, int) else "?"
    head = f"{result.get('ref', '')} chars {start:,}-{end:,} of {total}"
    if result.get("next_offset") is not None:
        head += f"; read on with offset={result['next_offset']}"
    return f"{head}\n{result['content']}"


_DEFAULTS: dict[str, Callable[..., str]] = {
    "fs.read": _fs_read,
    "fs.list": _fs_list,
    "shell.run": _shell_run,
    "http.fetch": _http_fetch,
    "context.read": _context_read,
}
