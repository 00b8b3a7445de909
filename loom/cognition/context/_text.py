"""Text helpers shared by the reducers, the summarizers and the manager: trimming with
markers that say what was left out, HTML to text, and the lossless and raw renderings of
a tool result."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from typing import Any

__all__ = ["cap", "full_text", "html_to_text", "raw_text", "trim_lines"]

_BLOCK_SIZE = 200
"""A string field longer than this (or with a line break) is its own block in full_text."""
_SKIPPED = frozenset({"script", "style", "noscript", "template", "svg", "head"})
_BLOCKS = frozenset(
    {
        "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt",
        "fieldset", "figcaption", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6",
        "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table",
        "title", "tr", "ul",
    }
)  # fmt: skip
_CELLS = frozenset({"td", "th"})
_SPACES = re.compile(r"[ \t\f\v\r]+")


def cap(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with a marker counting the rest."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [+{len(text) - limit:,} chars]"


def trim_lines(text: str, head: int, tail: int, line_chars: int) -> str:
    """The first ``head`` and last ``tail`` lines of ``text`` with a marker counting the
    lines between; each line cut to ``line_chars``."""
    lines = text.splitlines()
    if len(lines) > head + tail:
        elided = len(lines) - head - tail
        kept = [*lines[:head], f"… [{elided:,} lines elided] …", *lines[len(lines) - tail :]]
    else:
        kept = lines
    return "\n".join(cap(line, line_chars) for line in kept)


class _TextOf(HTMLParser):
    """Collects the visible text of an HTML page: one line per block, ``|`` between
    table cells, scripts and styles left out."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.line: list[str] = []
        self.skip = 0
        self.title: list[str] = []
        self.in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        elif tag in _SKIPPED:
            self.skip += 1
        elif tag in _BLOCKS:
            self.newline()
        elif tag in _CELLS and "".join(self.line).strip():
            self.line.append(" | ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        elif tag in _SKIPPED:
            self.skip = max(0, self.skip - 1)
        elif tag in _BLOCKS:
            self.newline()

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title.append(data)
        elif not self.skip:
            self.line.append(data)

    def newline(self) -> None:
        line = _SPACES.sub(" ", "".join(self.line).replace("\n", " ")).strip()
        if line:
            self.lines.append(line)
        self.line = []


def html_to_text(html: str) -> str:
    """The visible text of an HTML document, a line per block element, the title first.

    Args:
        html: the document (need not be well formed).
    """
    parser = _TextOf()
    parser.feed(html)
    parser.close()
    parser.newline()
    title = _SPACES.sub(" ", "".join(parser.title)).strip()
    return "\n".join(([title] if title else []) + parser.lines)


def full_text(result: Any) -> str:
    """A tool result as readable text that loses nothing: a string as it is; a map as its
    short fields (``key: <JSON>``), then its lists (``key: [N items]`` and an item per
    line, as JSON), then its long text fields as blocks (``--- key ---`` and the text,
    line breaks kept); anything else as indented JSON."""
    if isinstance(result, str):
        return result
    if isinstance(result, dict):
        short: list[str] = []
        lists: list[str] = []
        blocks: list[str] = []
        for key, value in result.items():
            if isinstance(value, str) and ("\n" in value or len(value) > _BLOCK_SIZE):
                blocks.append(f"--- {key} ---\n{value}")
            elif isinstance(value, list) and len(value) > 1:
                items = "\n".join(f" {_json(item)}" for item in value)
                lists.append(f"{key}: [{len(value):,} items]\n{items}")
            else:
                short.append(f"{key}: {_json(value)}")
        return "\n".join(short + lists + blocks)
    return json.dumps(result, ensure_ascii=False, indent=1, default=str)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def raw_text(result: Any) -> str:
    """A tool result as a loop without context engineering gives it to the model: a
    string as it is, anything else as JSON."""
    if isinstance(result, str):
        return result
    return json.dumps(result, ensure_ascii=False, default=str)
