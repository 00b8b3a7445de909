"""``fs.*``: read, write, list and delete files inside the tool's jail.

Every path goes through :mod:`loom.tools.builtin._paths`: relative to the jail, and
refused (:class:`~loom.tools.builtin._paths.PathEscapeError`) when it, or a symlink on
the way, leads outside. The work is done on the descriptor that was checked.
"""

from __future__ import annotations

import base64
import codecs
import errno
import os
import stat
from typing import Annotated, Literal, NotRequired

from pydantic import Field
from typing_extensions import TypedDict

from loom.errors import DirectoryNotEmptyError, JailRootError, NotAFileError
from loom.tools._tool import ToolContext, tool
from loom.tools.builtin._paths import jail_of, open_in_jail, open_parent, relative
from loom.tools.builtin._paths import make_dirs as create_dirs
from loom.tools.sandbox._policy import Sandbox

__all__ = [
    "DeleteResult",
    "DirectoryNotEmptyError",
    "Entry",
    "JailRootError",
    "ListResult",
    "NotAFileError",
    "ReadResult",
    "WriteResult",
    "fs_delete",
    "fs_list",
    "fs_read",
    "fs_write",
]

_MAX_READ = 1 << 24
"""The most ``fs.read`` returns at once (16 MiB; the broker's payload limit is lower by
default)."""
_FILE_MODE = 0o644
_SANDBOX = Sandbox()
"""The defaults: the jail read-write, no network."""


class ReadResult(TypedDict):
    """What ``fs.read`` returns."""

    path: str
    size: int
    """The file's size in bytes."""
    bytes: int
    """How many bytes from ``offset`` the content covers."""
    content: str | None
    """The bytes as text, or ``None`` when they are not UTF-8."""
    base64: NotRequired[str]
    """The bytes, base64-encoded, when they are not UTF-8."""
    truncated: bool
    """The file goes on past what was returned."""


class WriteResult(TypedDict):
    """What ``fs.write`` returns."""

    path: str
    bytes: int


class Entry(TypedDict):
    """One directory entry; symlinks are not followed."""

    name: str
    type: Literal["file", "dir", "symlink", "other"]
    size: int


class ListResult(TypedDict):
    """What ``fs.list`` returns."""

    path: str
    entries: list[Entry]
    truncated: bool


class DeleteResult(TypedDict):
    """What ``fs.delete`` returns."""

    path: str
    deleted: int
    """Files, directories and links removed."""


@tool(name="fs.read", idempotent=True, sandbox=_SANDBOX)
def fs_read(
    path: str,
    ctx: ToolContext,
    offset: Annotated[int, Field(ge=0)] = 0,
    max_bytes: Annotated[int, Field(ge=0, le=_MAX_READ)] = 65536,
) -> ReadResult:
    """Read part of a file in the jail, as text when it is UTF-8, else as base64.

    Args:
        path: the file, relative to the jail.
        offset: the byte to start at.
        max_bytes: the most bytes to return.

    Raises:
        JailRequiredError: the call has no jail.
        PathEscapeError: the path leads outside the jail.
        NotAFileError: the path is a directory or another non-regular file.
        OSError: the file cannot be read (``FileNotFoundError``...).
    """
    jail = jail_of(ctx)
    fd = open_in_jail(jail, path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = _regular(fd, path)
        data = _read_at(fd, offset, max_bytes + 1)
    finally:
        os.close(fd)
    truncated = len(data) > max_bytes
    data = data[:max_bytes]
    text = _utf8(data, complete=not truncated)
    if text is None:
        return {
            "path": path,
            "size": info.st_size,
            "bytes": len(data),
            "content": None,
            "base64": base64.b64encode(data).decode("ascii"),
            "truncated": truncated,
        }
    covered = len(text.encode("utf-8"))
    return {
        "path": path,
        "size": info.st_size,
        "bytes": covered,
        "content": text,
        "truncated": truncated,
    }


@tool(name="fs.write", sandbox=_SANDBOX)
def fs_write(
    path: str, content: str, ctx: ToolContext, append: bool = False, make_dirs: bool = False
) -> WriteResult:
    """Write text (UTF-8) to a file in the jail, replacing it or appending to it.

    Args:
        path: the file, relative to the jail; created (mode 0644) if missing.
        content: the text to write.
        append: add to the end instead of replacing the file's content.
        make_dirs: create missing parent directories first.

    Raises:
        JailRequiredError: the call has no jail.
        PathEscapeError: the path, or a symlink on the way, leads outside the jail.
        NotAFileError: the path is a directory or another non-regular file.
        OSError: the file cannot be written (``FileNotFoundError`` for a missing parent...).
    """
    jail = jail_of(ctx)
    if make_dirs:
        parent = os.path.dirname(relative(jail, path).rstrip("/"))
        if parent:
            create_dirs(jail, parent)
    mode = os.O_APPEND if append else 0
    fd = open_in_jail(jail, path, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | mode, _FILE_MODE)
    data = content.encode("utf-8")
    try:
        _regular(fd, path)
        if not append:
            os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    return {"path": path, "bytes": len(data)}


@tool(name="fs.list", idempotent=True, sandbox=_SANDBOX)
def fs_list(
    ctx: ToolContext, path: str = ".", limit: Annotated[int, Field(ge=1, le=100_000)] = 1000
) -> ListResult:
    """List a directory in the jail, by name; symlinks are listed, not followed.

    Args:
        path: the directory, relative to the jail.
        limit: the most entries to return; when the directory has more, which ones are
            returned is the file system's choice.

    Raises:
        JailRequiredError: the call has no jail.
        PathEscapeError: the path leads outside the jail.
        OSError: the directory cannot be read (``NotADirectoryError``...).
    """
    jail = jail_of(ctx)
    fd = open_in_jail(jail, path, os.O_RDONLY | os.O_DIRECTORY)
    entries: list[Entry] = []
    truncated = False
    try:
        with os.scandir(fd) as scan:
            for item in scan:
                if len(entries) == limit:
                    truncated = True
                    break
                try:
                    info = item.stat(follow_symlinks=False)
                except FileNotFoundError:  # deleted since it was listed
                    continue
                entries.append(
                    {"name": item.name, "type": _kind(info.st_mode), "size": info.st_size}
                )
    finally:
        os.close(fd)
    entries.sort(key=lambda entry: entry["name"])
    return {"path": path, "entries": entries, "truncated": truncated}


@tool(name="fs.delete", sandbox=_SANDBOX)
def fs_delete(path: str, ctx: ToolContext, recursive: bool = False) -> DeleteResult:
    """Delete a file, a symlink (not its target) or a directory in the jail.

    Args:
        path: what to delete, relative to the jail.
        recursive: delete a directory with everything in it; symlinks inside are removed,
            never followed.

    Raises:
        JailRequiredError: the call has no jail.
        JailRootError: the path is the jail itself.
        PathEscapeError: the path's directory leads outside the jail.
        DirectoryNotEmptyError: the directory has entries and ``recursive`` is off.
        OSError: it cannot be deleted (``FileNotFoundError``...).
    """
    jail = jail_of(ctx)
    if os.path.normpath(relative(jail, path)) == ".":
        raise JailRootError(f"fs.delete refuses to delete the jail itself ({path!r})")
    parent_fd, name = open_parent(jail, path)
    try:
        info = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        if not stat.S_ISDIR(info.st_mode):
            os.unlink(name, dir_fd=parent_fd)
            deleted = 1
        elif recursive:
            deleted = _remove_tree(parent_fd, name)
        else:
            try:
                os.rmdir(name, dir_fd=parent_fd)
            except OSError as exc:
                if exc.errno != errno.ENOTEMPTY:
                    raise
                raise DirectoryNotEmptyError(
                    f"directory {path!r} is not empty: pass recursive=true to delete it all"
                ) from None
            deleted = 1
    finally:
        os.close(parent_fd)
    return {"path": path, "deleted": deleted}


def _regular(fd: int, path: str) -> os.stat_result:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise NotAFileError(f"{path!r} is not a regular file ({_kind(info.st_mode)})")
    return info


def _read_at(fd: int, offset: int, size: int) -> bytes:
    """Up to ``size`` bytes from ``offset`` (fewer only at the end of the file)."""
    parts: list[bytes] = []
    while size > 0:
        part = os.pread(fd, min(size, 1 << 20), offset)
        if not part:
            break
        parts.append(part)
        offset += len(part)
        size -= len(part)
    return b"".join(parts)


def _remove_tree(parent_fd: int, name: str) -> int:
    """Remove directory ``name`` under ``parent_fd`` and all in it; the count removed.
    Each directory is opened ``O_NOFOLLOW``: one swapped for a symlink fails to open."""
    fd = os.open(
        name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd
    )
    count = 0
    try:
        with os.scandir(fd) as scan:
            items = list(scan)
        for item in items:
            if item.is_dir(follow_symlinks=False):
                count += _remove_tree(fd, item.name)
            else:
                os.unlink(item.name, dir_fd=fd)
                count += 1
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)
    return count + 1


def _utf8(data: bytes, *, complete: bool) -> str | None:
    """``data`` as text, or ``None`` when it is not UTF-8. An incomplete file may end in
    part of a character: that part is left out."""
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(data, final=complete)
    except UnicodeDecodeError:
        return None


def _kind(mode: int) -> Literal["file", "dir", "symlink", "other"]:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"
