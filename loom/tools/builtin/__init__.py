"""The built-in tools: files, commands, HTTP and the clock, each confined by its policy.

Serve them all with ``loom worker loom.tools.builtin:TOOLS``. The file and command tools
work inside the call's jail (its working directory) and refuse paths that leave it; the
HTTP tool reaches only the hosts its network policy allows (none until an operator lists
them). Each checks its policy itself as well as running under the sandbox.
"""

from loom.tools._tool import Tool
from loom.tools.builtin._clock import UnknownTimeZoneError, time_now
from loom.tools.builtin._commands import CommandRefusedError
from loom.tools.builtin._fs import (
    DirectoryNotEmptyError,
    JailRootError,
    NotAFileError,
    fs_delete,
    fs_list,
    fs_read,
    fs_write,
)
from loom.tools.builtin._paths import JailRequiredError, PathEscapeError
from loom.tools.builtin._shell import shell_run
from loom.tools.builtin._web import FetchError, FetchTimeoutError, HostRefusedError, http_fetch

__all__ = [
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
]

TOOLS: list[Tool] = [fs_read, fs_write, fs_list, fs_delete, shell_run, http_fetch, time_now]
"""Every built-in tool."""
