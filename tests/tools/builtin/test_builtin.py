"""The built-in tools package: its public names, and the tools a worker serves."""

from __future__ import annotations

from loom.errors import LoomError
from loom.tools import builtin
from loom.tools._loader import load_tools


def test_public_names() -> None:
    """The package exports the tools, TOOLS and the errors they raise."""
    assert set(builtin.__all__) == {
        "TOOLS",
        "CommandRefusedError",
        "DirectoryNotEmptyError",
        "FetchError",
        "FetchTimeoutError",
        "HostRefusedError",
        "JailRequiredError",
        "JailRootError",
        "NotAFileError",
        "PathEscapeError",
        "UnknownTimeZoneError",
        "fs_delete",
        "fs_list",
        "fs_read",
        "fs_write",
        "http_fetch",
        "shell_run",
        "time_now",
    }
    for name in builtin.__all__:
        value = getattr(builtin, name)
        if isinstance(value, type):
            assert issubclass(value, LoomError), name


def test_worker_target_loads_every_tool() -> None:
    """``loom.tools.builtin:TOOLS`` names every built-in tool, each with a policy."""
    tools = load_tools("loom.tools.builtin:TOOLS")
    assert [tool.name for tool in tools] == [
        "fs.read",
        "fs.write",
        "fs.list",
        "fs.delete",
        "shell.run",
        "http.fetch",
        "time.now",
    ]
    for tool in tools:
        assert tool.sandbox is not None, tool.name
        assert tool.description, tool.name
        assert tool.returns is not None, tool.name
        assert "ctx" not in tool.schema["properties"], tool.name
