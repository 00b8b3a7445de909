"""The import rule, pinned: the layers of loom/ read bottom-up, no import runs back up a
layer, parts meet only through each other's public faces, the broker never loads the
actor, tools, cognition or desktop stacks, and no module imports itself in a circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

LOOM = Path(__file__).parent.parent / "loom"

LAYERS = {
    "loom.errors": 0,
    "loom.logs": 0,
    "loom.config": 0,
    "loom._histogram": 0,
    "loom._tables": 0,
    "loom._loader": 0,
    "loom.keys": 0,
    "loom.protocol": 1,
    "loom.session": 2,
    "loom.actor": 3,
    "loom.tools": 3,
    "loom.broker": 3,
    "loom.dashboard": 3,
    "loom.desktop": 3,
    "loom.federation": 3,
    "loom.cognition": 4,
    "loom.mcp": 4,
    "loom.cli": 5,
    "loom.demo": 5,
    "loom": 6,
}
"""Each part of the package and its layer, bottom up (``docs/decisions.md`` #23)."""

NEVER = {
    "loom.broker": {
        "loom.actor",
        "loom.tools",
        "loom.cognition",
        "loom.desktop",
        "loom.mcp",
        "loom.federation",
    }
}
"""Parts that may not import others at all, even through their public faces."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(LOOM.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in LOOM.rglob("*.py")}


def part_of(module: str) -> str:
    """The longest part (a key of LAYERS) ``module`` belongs to."""
    while module not in LAYERS:
        module = module.rpartition(".")[0]
    return module


def imports(module: str) -> set[str]:
    """The loom modules ``module`` imports, at any depth of its code (lazy imports in
    functions count: they are dependencies too)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1]])
                base = f"{base}.{node.module}" if node.module else base
            for alias in node.names:  # `from pkg import submodule` depends on the submodule
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
    return {name for name in found if name == "loom" or name.startswith("loom.")}


GRAPH = {module: imports(module) for module in MODULES}


def test_every_module_has_a_layer() -> None:
    """A new part of the package must be placed in a layer here."""
    for module in MODULES:
        assert part_of(module) in LAYERS, module


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_down_and_through_public_faces(module: str) -> None:
    """Into another part only from a layer below or beside, only its public modules
    (no component starting with ``_``), and never what NEVER forbids."""
    part = part_of(module)
    for target in GRAPH[module]:
        other = part_of(target)
        if other == part:
            continue
        assert LAYERS[other] <= LAYERS[part], f"{module} imports {target}, a layer above"
        inner = target[len(other) :].split(".")
        assert not any(name.startswith("_") for name in inner), (
            f"{module} imports {target}, inside {other}: use its public face"
        )
        assert other not in NEVER.get(part, set()), f"{module} imports {target}"


def test_no_circles() -> None:
    """No module reaches itself through its imports (Tarjan's strongly connected parts)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH.get(node, set()) & MODULES.keys():
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            part = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                part.append(member)
                if member == node:
                    break
            if len(part) > 1:
                circles.append(sorted(part))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 5000))
    for module in sorted(MODULES):
        if module not in index:
            visit(module)
    assert circles == []


@pytest.mark.parametrize("target", ["loom.broker", "loom.cli.broker"])
def test_the_broker_loads_no_actor_tools_cognition_or_desktop(target: str) -> None:
    """Importing the broker (or its program) loads none of the other stacks, nor the
    libraries only they need."""
    code = (
        f"import sys, {target}\n"
        "heavy = ('loom.actor', 'loom.tools', 'loom.cognition', 'loom.desktop', 'aiohttp',"
        " 'httpx', 'pyseccomp', 'loom.federation', 'nats')\n"
        "print([m for m in sys.modules if m.startswith(heavy)])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"
