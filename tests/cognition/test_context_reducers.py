"""Per-tool reduction of observations."""

from __future__ import annotations

import json
from typing import Any

from loom.cognition.context import Limits, Reducers, Step, reduce_json


def step(tool: str, result: Any, arguments: dict[str, Any] | None = None) -> Step:
    return Step(1, tool, "call_1", arguments or {}, result)


def fetch_result(body: str, kind: str, status: int = 200) -> dict[str, Any]:
    headers = {"content-type": kind, "date": "Tue, 14 May 2024 07:41:09 GMT", "server": "nginx",
               "x-request-id": "abc123"}  # fmt: skip
    return {"url": "https://status.example.com/", "status": status, "headers": headers,
            "content": body, "truncated": False}  # fmt: skip


def test_fs_read_keeps_content_and_drops_metadata() -> None:
    """fs.read keeps the file's text whole with a one-line header; no bytes/truncated noise."""
    text = "line one\nline two\n" * 200
    result = {"path": "a.txt", "size": len(text), "bytes": len(text), "content": text,
              "truncated": False}  # fmt: skip
    reduced = Reducers().reduce(step("fs.read", result))
    assert reduced == f"a.txt ({len(text):,} bytes)\n{text}"


def test_fs_read_says_where_to_read_on() -> None:
    """A truncated read says which bytes are shown and the offset to continue from."""
    result = {"path": "big.log", "size": 100_000, "bytes": 4096, "content": "x",
              "truncated": True}  # fmt: skip
    reduced = Reducers().reduce(step("fs.read", result, {"path": "big.log", "offset": 8192}))
    assert reduced.splitlines()[0] == (
        "big.log (100,000 bytes; bytes 8,192-12,288 shown, read on with offset=12288)"
    )


def test_fs_read_leaves_out_binary_content() -> None:
    """A binary file's base64 is not put in the prompt."""
    result = {"path": "a.png", "size": 9, "bytes": 9, "content": None, "base64": "iVBORw0K",
              "truncated": False}  # fmt: skip
    assert Reducers().reduce(step("fs.read", result)) == (
        "a.png (9 bytes)\n[binary content, base64 left out]"
    )


def test_fs_list_gives_names_and_types_and_caps_entries() -> None:
    """fs.list keeps names (dirs marked /), drops sizes, and counts entries past the cap."""
    entries = [{"name": f"d{i}", "type": "dir", "size": 4096} for i in range(3)]
    entries += [{"name": f"f{i:03d}", "type": "file", "size": 123456 + i} for i in range(100)]
    entries.append({"name": "link", "type": "symlink", "size": 7})
    reduced = Reducers(Limits(entries=10)).reduce(
        step("fs.list", {"path": "logs", "entries": entries, "truncated": False})
    )
    lines = reduced.splitlines()
    assert lines[0] == "logs: 104 entries (3 dirs, 100 files, 1 symlink)"
    assert lines[1:4] == ["d0/", "d1/", "d2/"]
    assert "… 94 more …" in lines
    assert lines[-1] == "link@"
    assert "123456" not in reduced


def test_shell_run_keeps_exit_code_head_and_tail() -> None:
    """shell.run keeps the exit code and both streams, trimmed head and tail with a count."""
    stdout = "".join(f"row {i}\n" for i in range(100))
    result = {"exit_code": 2, "stdout": stdout, "stderr": "grep: x: No such file\n",
              "truncated": False, "timed_out": True}  # fmt: skip
    reduced = Reducers(Limits(head=3, tail=2)).reduce(step("shell.run", result))
    assert reduced == (
        "exit 2 (timed out)\nstdout (100 lines):\nrow 0\nrow 1\nrow 2\n"
        "… [95 lines elided] …\nrow 98\nrow 99\nstderr (1 lines):\ngrep: x: No such file"
    )


def test_shell_run_omits_empty_streams() -> None:
    """Empty output streams are not mentioned."""
    result = {"exit_code": 0, "stdout": "", "stderr": "", "truncated": False, "timed_out": False}
    assert Reducers().reduce(step("shell.run", result)) == "exit 0"


def test_http_fetch_strips_html() -> None:
    """http.fetch keeps status and content type and the page's text without tags or scripts."""
    body = (
        "<!DOCTYPE html><html><head><title>Status &amp; Health</title>"
        "<style>body{color:red}</style><script>var secret = 1;</script></head>"
        "<body><h1>All good</h1><p>Replica <b>wh-3</b> in&nbsp;maintenance</p>"
        "<table><tr><td>API</td><td>Operational</td></tr></table></body></html>"
    )
    reduced = Reducers().reduce(step("http.fetch", fetch_result(body, "text/html; charset=utf-8")))
    assert reduced == (
        "HTTP 200 text/html https://status.example.com/\nStatus & Health\nAll good\n"
        "Replica wh-3 in\xa0maintenance\nAPI | Operational"
    )


def test_http_fetch_reduces_json_bodies() -> None:
    """A JSON body loses null and empty fields, and its long lists are cut with a count."""
    body = json.dumps({"runs": [{"id": i, "error": None, "labels": []} for i in range(30)],
                       "next": None})  # fmt: skip
    reduced = Reducers(Limits(items=3)).reduce(
        step("http.fetch", fetch_result(body, "application/json"))
    )
    assert reduced.splitlines()[1] == '{"runs":[{"id":0},{"id":1},{"id":2},"… 27 more items"]}'


def test_http_fetch_caps_long_bodies() -> None:
    """A long text body is cut to the body limit with a count of what was left out."""
    body = "".join(f"row {i:02d}\n" for i in range(40))
    reduced = Reducers(Limits(body_chars=100)).reduce(
        step("http.fetch", fetch_result(body, "text/plain"))
    )
    assert reduced.splitlines()[1:] == [*body.splitlines()[:14], "ro… [+179 chars]"]


def test_generic_json_drops_empties_and_caps() -> None:
    """Unknown tools get generic JSON reduction: no nulls or empties, capped lists and strings."""
    result = {"a": None, "b": "", "c": [], "d": {}, "e": {"f": None}, "g": "x" * 50,
              "h": list(range(8)), "i": 0, "j": False}  # fmt: skip
    reduced = Reducers(Limits(items=3, string_chars=10)).reduce(step("db.query", result))
    assert reduced == '{"g":"xxxxxxxxxx… [+40 chars]","h":[0,1,2,"… 5 more items"],"i":0,"j":false}'


def test_reduce_json_trims_multiline_strings_by_lines() -> None:
    """A long multi-line string keeps its first and last lines."""
    value = reduce_json("\n".join(f"l{i}" for i in range(100)), Limits(head=2, tail=1))
    assert value == "l0\nl1\n… [97 lines elided] …\nl99"


def test_unexpected_shapes_fall_back_to_generic() -> None:
    """A default reducer given a result of another shape uses the generic reducer."""
    assert Reducers().reduce(step("fs.read", "plain text")) == "plain text"
    assert Reducers().reduce(step("shell.run", [1, None])) == "[1,null]"


def test_errors_are_reported_as_errors() -> None:
    """A failed call's observation is its error text."""
    failed = Step(1, "fs.read", "c", {}, None, error="FileNotFoundError: nope")
    assert Reducers().reduce(failed) == "error: FileNotFoundError: nope"


def test_registered_patterns_take_precedence() -> None:
    """The last registered matching pattern wins, with fnmatch patterns."""
    reducers = Reducers()
    reducers.register("web.*", lambda s: "web")
    reducers.register("web.search", lambda s: "search")
    reducers.register("fs.read", lambda s: "mine")
    assert reducers.reduce(step("web.search", {})) == "search"
    assert reducers.reduce(step("web.get", {})) == "web"
    assert reducers.reduce(step("fs.read", {"content": "x"})) == "mine"


def test_without_defaults_everything_is_generic() -> None:
    """Reducers(defaults=False) reduces every tool as generic JSON."""
    result = {"exit_code": 0, "stdout": "", "stderr": "", "truncated": False, "timed_out": False}
    assert Reducers(defaults=False).reduce(step("shell.run", result)) == (
        '{"exit_code":0,"truncated":false,"timed_out":false}'
    )


def test_reduction_is_deterministic() -> None:
    """The same result reduces to the same text every time."""
    body = "<html><body>" + "".join(f"<p>item {i}</p>" for i in range(500)) + "</body></html>"
    outputs = {Reducers().reduce(step("http.fetch", fetch_result(body, "text/html")))
               for _ in range(3)}  # fmt: skip
    assert len(outputs) == 1
