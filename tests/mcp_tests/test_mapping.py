"""How names, results, errors and settings map between MCP and Loom (no processes)."""

from __future__ import annotations

from pathlib import Path

import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from loom.cli.mcp import load_servers
from loom.errors import (
    ConfigError,
    InvalidParamsError,
    ToolFailedError,
    ToolTimeoutError,
    UnknownToolError,
    WorkerLostError,
)
from loom.mcp import McpServerSettings, mesh_name
from loom.mcp._results import mcp_failure, tool_result
from loom.mcp._serve import _mcp_result, _progress


def test_mcp_names_become_loom_names() -> None:
    assert mesh_name("time", "get_current_time") == "time.get_current_time"
    assert mesh_name("gh", "repos.list") == "gh.repos.list"
    assert mesh_name("x", "a b/c") == "x.a_b_c"
    assert mesh_name("x", "a..b") == "x.a._.b"


def test_results_keep_text_content_and_structure() -> None:
    result = types.CallToolResult(
        content=[
            types.TextContent(text="one"),
            types.ImageContent(data="aGk=", mime_type="image/png"),
            types.TextContent(text="two"),
        ],
        structured_content={"n": 1},
    )
    mapped = tool_result(result, "s.t")
    assert mapped["text"] == "one\n\ntwo"
    assert mapped["content"][1] == {"type": "image", "data": "aGk=", "mime_type": "image/png"}
    assert mapped["structured"] == {"n": 1}
    failed = types.CallToolResult(content=[types.TextContent(text="no such city")], is_error=True)
    with pytest.raises(ToolFailedError, match="no such city"):
        tool_result(failed, "s.t")


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (types.INVALID_PARAMS, InvalidParamsError),
        (types.METHOD_NOT_FOUND, UnknownToolError),
        (types.REQUEST_TIMEOUT, ToolTimeoutError),
        (types.CONNECTION_CLOSED, WorkerLostError),
        (types.INTERNAL_ERROR, ToolFailedError),
    ],
)
def test_protocol_errors_map_to_codes(code: int, error: type[Exception]) -> None:
    mapped = mcp_failure(MCPError(code, "said the server"), "s.t")
    assert isinstance(mapped, error) and "said the server" in str(mapped)


def test_loom_results_and_progress_as_mcp() -> None:
    plain = _mcp_result({"sum": 3})
    assert plain.structured_content == {"sum": 3} and plain.content[0].text == '{"sum": 3}'
    assert _mcp_result("hi").content[0].text == "hi" and _mcp_result(5).structured_content is None
    bridged = _mcp_result(
        {"text": "t", "content": [{"type": "text", "text": "t"}], "structured": None}
    )
    assert bridged.content[0].text == "t" and bridged.structured_content is None
    assert _progress({"progress": 2, "total": 4, "message": "half"}, 9) == (2.0, 4.0, "half")
    assert _progress({"step": 1}, 3) == (3.0, None, '{"step": 1}')
    assert _progress(None, 1) == (1.0, None, None)


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ("[mcp.servers.a]\nargs = []\n", "either command"),
        ('[mcp.servers.a]\ncommand = "x"\nurl = "http://h/mcp"\n', "either command"),
        ('[mcp.servers.a]\nurl = "ftp://h"\n', "http://"),
        ('[mcp.servers.a]\nurl = "http://h/mcp"\nsandbox = {}\n', "stdio servers"),
        ('[mcp.servers.a]\ncommand = "x"\nsandbox = {net = {mode = "everywhere"}}\n', "mode"),
        ('[mcp.servers.a]\ncommand = "x"\ntimeuot = 3\n', "timeuot"),
        ('[mcp.servers."a.b"]\ncommand = "x"\n', "server name"),
        ('[mcp.servers.a]\ncommand = "x"\nroots = ["/srv"]\n', "file://"),
        ("[log]\n", "no [mcp.servers.NAME]"),
    ],
)
def test_bad_settings_name_the_file_and_key(tmp_path: Path, table: str, named: str) -> None:
    path = tmp_path / "mcp.toml"
    path.write_text(table)
    with pytest.raises(ConfigError, match=r"mcp\.toml") as raised:
        load_servers(path)
    assert named in str(raised.value)


def test_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mcp.toml"
    path.write_text('[mcp.servers.a]\ncommand = "x"\ncwd = "work"\n')
    assert load_servers(path)["a"].cwd == tmp_path / "work"
    with pytest.raises(ConfigError, match=r"no \[mcp\.servers\.b\]"):
        load_servers(path, ["b"])
    assert McpServerSettings(command="x").transport == "auto"
