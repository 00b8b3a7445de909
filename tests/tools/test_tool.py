"""`@tool`: schemas from signatures and docstrings, argument validation, loading."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from loom import ToolContext, tool
from loom.errors import InvalidParamsError, ToolDefinitionError
from loom.protocol import decode_value, encode_value
from loom.tools._loader import load_tools


class Point(BaseModel):
    x: float
    y: float


@tool(name="geo.move", timeout=3, idempotent=True)
async def move(point: Point, dx: float, ctx: ToolContext, label: str = "p") -> Point:
    """Move a point sideways.

    Args:
        point: where it starts.
        dx: how far to move,
            in metres.
        label: a name for it.

    Returns:
        the moved point.
    """
    return Point(x=point.x + dx, y=point.y)


def test_schema_comes_from_the_signature_and_docstring() -> None:
    """Types, defaults, required fields and descriptions; the context is not an argument."""
    schema = move.schema
    assert schema["required"] == ["point", "dx"]
    assert set(schema["properties"]) == {"point", "dx", "label"}
    assert schema["properties"]["dx"] == {
        "description": "how far to move, in metres.",
        "title": "Dx",
        "type": "number",
    }
    assert schema["properties"]["label"]["default"] == "p"
    assert schema["additionalProperties"] is False
    assert "Point" in schema["$defs"]
    assert move.description == "Move a point sideways."
    assert move.returns is not None and move.returns["title"] == "Point"
    assert move.context_param == "ctx"
    spec = move.spec()
    assert (spec["name"], spec["timeout"], spec["idempotent"], spec["concurrency"]) == (
        "geo.move",
        3,
        True,
        8,
    )


def test_defaults_name_and_concurrency() -> None:
    """A bare @tool is named module.function; a plain def runs one call at a time."""

    @tool
    def ping() -> str:
        return "pong"

    assert ping.name == f"{__name__}.ping"
    assert ping.concurrency == 1 and not ping.is_async
    assert ping() == "pong"  # still a plain function


def test_bind_validates_and_names_the_field() -> None:
    """Wrong types, missing and unknown arguments are INVALID_PARAMS naming the field."""
    kwargs = move.bind({"point": {"x": 1, "y": 2}, "dx": "2.5"})
    assert kwargs["point"] == Point(x=1, y=2) and kwargs["dx"] == 2.5
    with pytest.raises(InvalidParamsError, match="dx: Input should be a valid number") as info:
        move.bind({"point": {"x": 1, "y": 2}, "dx": "far"})
    assert info.value.code == "INVALID_PARAMS"
    assert info.value.details["errors"][0]["loc"] == ("dx",)
    with pytest.raises(InvalidParamsError, match="point: Field required"):
        move.bind({"dx": 1})
    with pytest.raises(InvalidParamsError, match="speed: Extra inputs are not permitted"):
        move.bind({"point": {"x": 1, "y": 2}, "dx": 1, "speed": 3})
    with pytest.raises(InvalidParamsError, match="must be a map"):
        move.bind([1, 2])


def test_parameters_that_shadow_model_attributes_work() -> None:
    """Arguments named like pydantic's own attributes (json, schema, model_x) are fine."""

    @tool(name="odd.names")
    def odd(json: int, schema: str, model_x: int = 0) -> int:
        return json + model_x

    assert odd.bind({"json": 1, "schema": "s"}) == {"json": 1, "schema": "s", "model_x": 0}


def test_definitions_that_cannot_be_tools_are_refused() -> None:
    """*args, a bad name, a bad option: ToolDefinitionError at definition time."""
    with pytest.raises(ToolDefinitionError, match="passable by name"):

        @tool
        def varargs(*values: int) -> int:
            return sum(values)

    with pytest.raises(ToolDefinitionError, match="dot-separated"):
        tool(name="bad name")(lambda: None)
    with pytest.raises(ToolDefinitionError, match="concurrency"):
        tool(name="x", concurrency=0)(lambda: None)


def test_results_encode_rich_types() -> None:
    """Models, datetimes and paths in a result are encoded as JSON-able values."""
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    value = {"p": Point(x=1, y=2), "when": when, "path": Path("/tmp/x"), "raw": b"\x00"}
    assert decode_value(encode_value(value)) == {
        "p": {"x": 1.0, "y": 2.0},
        "when": "2026-01-02T03:04:05Z",
        "path": "/tmp/x",
        "raw": b"\x00",
    }


def test_loader_finds_tools_in_a_file_or_an_attribute(tmp_path: Path) -> None:
    """Every module-level tool of a file, or the ones `:attr` names; clear errors."""
    source = tmp_path / "mytools.py"
    source.write_text(
        "from loom import tool\n"
        "@tool\ndef a() -> int:\n    return 1\n"
        "@tool(name='b.b')\ndef b() -> int:\n    return 2\n"
        "ONLY = [a]\nNOT_A_TOOL = 3\n"
    )
    assert [t.name for t in load_tools(str(source))] == ["mytools.a", "b.b"]
    assert [t.name for t in load_tools(f"{source}:ONLY")] == ["mytools.a"]
    assert [t.name for t in load_tools("loom.demo.tools")] == ["demo.stats", "demo.risk"]
    with pytest.raises(ToolDefinitionError, match="not a @tool"):
        load_tools(f"{source}:NOT_A_TOOL")
    with pytest.raises(ToolDefinitionError, match="no attribute"):
        load_tools(f"{source}:MISSING")
    with pytest.raises(ToolDefinitionError, match="no such Python file"):
        load_tools(str(tmp_path / "absent.py"))
    with pytest.raises(ToolDefinitionError, match="import failed"):
        load_tools("loom_no_such_module")


def test_a_tool_the_broker_would_refuse_is_refused_when_defined() -> None:
    """A concurrency past 10 000, or a spec over 64 KiB, is a definition error at once,
    not a worker whose READY the broker turns down."""

    def f(x: int) -> int:
        """Identity."""
        return x

    with pytest.raises(ToolDefinitionError, match="concurrency"):
        tool(name="t.many", concurrency=20_000)(f)
    huge = "word " * 20_000

    def g(x: int) -> int:
        return x

    g.__doc__ = huge
    with pytest.raises(ToolDefinitionError, match="spec"):
        tool(name="t.huge")(g)


def test_a_schema_tool_is_checked_as_the_broker_will_read_it() -> None:
    """A tool built from a given schema (an MCP server's) fails alone, at construction,
    when the broker would refuse the READY carrying it."""
    from loom.tools import SchemaTool

    async def run(arguments: dict[str, Any], context: ToolContext) -> Any:
        return arguments

    ok = SchemaTool("m.echo", run, {"type": "object"}, annotations={"readOnlyHint": True})
    assert ok.bind({"a": 1}) == {"arguments": {"a": 1}} and ok.spec()["annotations"]
    with pytest.raises(InvalidParamsError):
        ok.bind([1])
    deep: dict[str, Any] = {"type": "object"}
    for _ in range(40):
        deep = {"type": "object", "properties": {"x": deep}}
    for name, schema in [
        ("m." + "x" * 250, {"type": "object"}),  # a name the broker refuses
        ("m.deep", deep),  # deeper than the broker reads
        ("m.huge", {"type": "object", "maximum": 2**70}),  # not msgpack
        ("m..bad", {"type": "object"}),
    ]:
        with pytest.raises(ToolDefinitionError):
            SchemaTool(name, run, schema)
