"""``loom new TEMPLATE DIR``: a runnable project from a template (``trio``, ``agent``,
``blank``, ``tool-worker``, ``desktop-assistant``), with its own test."""

from __future__ import annotations

import argparse
import string
import sys
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

TEMPLATES = ("trio", "agent", "blank", "tool-worker", "desktop-assistant")
"""Each a directory of ``loom/templates``: files copied as they are, ``*.tmpl`` without
that suffix (so the package's checks do not take them for its own modules), and
``${project}`` in the README replaced by the project's name."""


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``new`` to ``loom``'s parser."""
    new = commands.add_parser(
        "new",
        parents=[common],
        help="write a runnable project from a template (trio, agent, blank, tool-worker,"
        " desktop-assistant)",
        epilog="examples:\n  loom new trio research-desk   (then: cd research-desk;"
        " loom run mesh.toml)\n  loom new tool-worker my-tools",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    new.add_argument("template", choices=TEMPLATES)
    new.add_argument("dir", type=Path, help="where to write it (new, or empty)")


def write_project(template: str, target: Path) -> list[Path]:
    """Copy ``template`` into ``target``; returns the files written.

    Raises:
        FileExistsError: ``target`` exists and is not an empty directory.
    """
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target} exists and is not empty")
    target.mkdir(parents=True, exist_ok=True)
    source = resources.files("loom") / "templates" / template
    written: list[Path] = []
    for item in sorted(source.iterdir(), key=lambda t: t.name):
        written += _copy(item, target, target.resolve().name)
    return written


def _copy(item: Traversable, target: Path, project: str) -> list[Path]:
    if item.is_dir():
        if item.name == "__pycache__":
            return []
        inner = target / item.name
        inner.mkdir(exist_ok=True)
        return [path for child in item.iterdir() for path in _copy(child, inner, project)]
    name = item.name.removesuffix(".tmpl")
    path = target / name
    text = item.read_text(encoding="utf-8")
    if name == "README.md":
        text = string.Template(text).safe_substitute(project=project)
    path.write_text(text, encoding="utf-8")
    return [path]


def run_new(args: argparse.Namespace) -> int:
    try:
        written = write_project(args.template, args.dir)
    except FileExistsError as exc:
        print(f"loom new: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    print(f"next: cd {args.dir} && loom run mesh.toml   (its test: python -m pytest)")
    return 0
