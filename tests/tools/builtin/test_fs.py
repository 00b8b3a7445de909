"""``fs.*``: reading, writing, listing and deleting inside the jail, and nothing outside."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from conftest import MakeContext

from loom.tools._tool import Tool
from loom.tools.builtin import (
    DirectoryNotEmptyError,
    JailRequiredError,
    JailRootError,
    NotAFileError,
    PathEscapeError,
    fs_delete,
    fs_list,
    fs_read,
    fs_write,
)


def test_write_then_read(jail: Path, context: MakeContext) -> None:
    """Text written is read back whole, with its size."""
    written = fs_write.fn(path="notes.txt", content="héllo\n", ctx=context("fs.write"))
    assert written == {"path": "notes.txt", "bytes": 7}
    result = fs_read.fn(path="notes.txt", ctx=context("fs.read"))
    assert result == {
        "path": "notes.txt",
        "size": 7,
        "bytes": 7,
        "content": "héllo\n",
        "truncated": False,
    }


def test_read_a_slice(jail: Path, context: MakeContext) -> None:
    """offset and max_bytes select a part; truncated says the file goes on."""
    (jail / "digits").write_text("0123456789")
    result = fs_read.fn(path="digits", offset=2, max_bytes=3, ctx=context("fs.read"))
    assert (result["content"], result["size"], result["truncated"]) == ("234", 10, True)
    tail = fs_read.fn(path="digits", offset=7, max_bytes=3, ctx=context("fs.read"))
    assert (tail["content"], tail["truncated"]) == ("789", False)


def test_read_cut_inside_a_character(jail: Path, context: MakeContext) -> None:
    """A cut in the middle of a UTF-8 character leaves the part out, still as text."""
    (jail / "word").write_text("aé")  # b"a\xc3\xa9"
    result = fs_read.fn(path="word", max_bytes=2, ctx=context("fs.read"))
    assert (result["content"], result["bytes"], result["truncated"]) == ("a", 1, True)


def test_read_binary_as_base64(jail: Path, context: MakeContext) -> None:
    """Bytes that are not UTF-8 come back base64-encoded."""
    (jail / "blob").write_bytes(b"\xff\x00\xfe")
    result = fs_read.fn(path="blob", ctx=context("fs.read"))
    assert result["content"] is None
    assert base64.b64decode(result["base64"]) == b"\xff\x00\xfe"


def test_read_a_directory_is_refused(jail: Path, context: MakeContext) -> None:
    """Reading a directory names the problem."""
    (jail / "sub").mkdir()
    with pytest.raises(NotAFileError, match="not a regular file"):
        fs_read.fn(path="sub", ctx=context("fs.read"))


def test_append_and_make_dirs(jail: Path, context: MakeContext) -> None:
    """append adds to the end; make_dirs creates missing parents."""
    ctx = context("fs.write")
    fs_write.fn(path="a/b/log", content="one\n", make_dirs=True, ctx=ctx)
    fs_write.fn(path="a/b/log", content="two\n", append=True, ctx=ctx)
    assert (jail / "a" / "b" / "log").read_text() == "one\ntwo\n"
    fs_write.fn(path="a/b/log", content="new", ctx=ctx)
    assert (jail / "a" / "b" / "log").read_text() == "new"


def test_write_needs_the_parent(jail: Path, context: MakeContext) -> None:
    """Without make_dirs a missing parent directory is an error."""
    with pytest.raises(FileNotFoundError):
        fs_write.fn(path="missing/file", content="x", ctx=context("fs.write"))


def test_write_creates_files_0644(jail: Path, context: MakeContext) -> None:
    """New files get mode 0644 (less what the umask takes away)."""
    fs_write.fn(path="f", content="x", ctx=context("fs.write"))
    umask = os.umask(0o022)
    os.umask(umask)
    assert (jail / "f").stat().st_mode & 0o777 == 0o644 & ~umask


@pytest.mark.usefixtures("resolver")
def test_writing_through_a_symlink_out_is_refused(
    jail: Path, outside: Path, context: MakeContext
) -> None:
    """A symlink to a file, a directory or a missing file outside is not written through."""
    (jail / "file").symlink_to(outside / "secret")
    (jail / "dir").symlink_to(outside)
    (jail / "new").symlink_to(outside / "new")
    ctx = context("fs.write")
    for path in ("file", "dir/secret", "new", "dir/sub/x"):
        with pytest.raises(PathEscapeError):
            fs_write.fn(path=path, content="pwned", make_dirs=True, ctx=ctx)
    assert (outside / "secret").read_text() == "top secret\n"
    assert sorted(os.listdir(outside)) == ["secret"]


@pytest.mark.usefixtures("resolver")
@pytest.mark.parametrize("path", ["../outside/secret", "link", "dir/secret", "ABS"])
def test_reading_outside_is_refused(
    path: str, jail: Path, outside: Path, context: MakeContext
) -> None:
    """``..``, an absolute path and symlinks out are refused for reading."""
    (jail / "link").symlink_to(outside / "secret")
    (jail / "dir").symlink_to(outside)
    path = str(outside / "secret") if path == "ABS" else path
    with pytest.raises(PathEscapeError):
        fs_read.fn(path=path, ctx=context("fs.read"))


def test_symlink_inside_is_read(jail: Path, context: MakeContext) -> None:
    """A symlink to a file in the jail reads the file."""
    (jail / "real").write_text("inside")
    (jail / "link").symlink_to("real")
    assert fs_read.fn(path="link", ctx=context("fs.read"))["content"] == "inside"


def test_list_names_types_and_sizes(jail: Path, outside: Path, context: MakeContext) -> None:
    """Entries come sorted by name with their type; symlinks are not followed."""
    (jail / "b.txt").write_text("12345")
    (jail / "a").mkdir()
    (jail / "out").symlink_to(outside)
    os.mkfifo(jail / "pipe")
    result = fs_list.fn(ctx=context("fs.list"))
    assert result["path"] == "."
    assert result["truncated"] is False
    kinds = {entry["name"]: entry["type"] for entry in result["entries"]}
    assert kinds == {"a": "dir", "b.txt": "file", "out": "symlink", "pipe": "other"}
    assert [entry["name"] for entry in result["entries"]] == ["a", "b.txt", "out", "pipe"]
    assert result["entries"][1]["size"] == 5


def test_list_limit_truncates(jail: Path, context: MakeContext) -> None:
    """More entries than ``limit`` set truncated."""
    for index in range(5):
        (jail / f"f{index}").write_text("")
    result = fs_list.fn(path=".", limit=3, ctx=context("fs.list"))
    assert len(result["entries"]) == 3
    assert result["truncated"] is True


@pytest.mark.usefixtures("resolver")
def test_listing_outside_is_refused(jail: Path, outside: Path, context: MakeContext) -> None:
    """A symlinked directory outside, ``..`` and absolute paths are not listed."""
    (jail / "out").symlink_to(outside)
    for path in ("out", "..", str(outside), "out/."):
        with pytest.raises(PathEscapeError):
            fs_list.fn(path=path, ctx=context("fs.list"))


def test_delete_files_and_directories(jail: Path, context: MakeContext) -> None:
    """A file, an empty directory and a tree (recursive) are deleted and counted."""
    ctx = context("fs.delete")
    (jail / "f").write_text("x")
    (jail / "empty").mkdir()
    (jail / "tree" / "sub").mkdir(parents=True)
    (jail / "tree" / "sub" / "g").write_text("y")
    assert fs_delete.fn(path="f", ctx=ctx) == {"path": "f", "deleted": 1}
    assert fs_delete.fn(path="empty/", ctx=ctx)["deleted"] == 1
    with pytest.raises(DirectoryNotEmptyError, match="recursive"):
        fs_delete.fn(path="tree", ctx=ctx)
    assert fs_delete.fn(path="tree", recursive=True, ctx=ctx)["deleted"] == 3
    assert os.listdir(jail) == []


@pytest.mark.parametrize("path", [".", "", "sub/..", "JAIL", "JAIL/"])
def test_deleting_the_jail_is_refused(path: str, jail: Path, context: MakeContext) -> None:
    """The jail itself cannot be deleted, however it is named."""
    (jail / "sub").mkdir()
    path = path.replace("JAIL", str(jail))
    with pytest.raises(JailRootError, match="the jail itself"):
        fs_delete.fn(path=path, recursive=True, ctx=context("fs.delete"))
    assert (jail / "sub").is_dir()


@pytest.mark.usefixtures("resolver")
def test_deleting_through_a_symlink_out_is_refused(
    jail: Path, outside: Path, context: MakeContext
) -> None:
    """A file behind a symlinked directory is not deleted; the symlink itself can be."""
    (jail / "out").symlink_to(outside)
    ctx = context("fs.delete")
    for path in ("out/secret", "../outside/secret", str(outside / "secret")):
        with pytest.raises(PathEscapeError):
            fs_delete.fn(path=path, ctx=ctx)
    assert fs_delete.fn(path="out", recursive=True, ctx=ctx)["deleted"] == 1
    assert not (jail / "out").is_symlink()
    assert (outside / "secret").read_text() == "top secret\n"


def test_recursive_delete_does_not_follow_symlinks(
    jail: Path, outside: Path, context: MakeContext
) -> None:
    """A tree holding symlinks to outside loses the links, outside keeps its files."""
    (jail / "tree" / "deep").mkdir(parents=True)
    (jail / "tree" / "to-dir").symlink_to(outside)
    (jail / "tree" / "deep" / "to-file").symlink_to(outside / "secret")
    result = fs_delete.fn(path="tree", recursive=True, ctx=context("fs.delete"))
    assert result["deleted"] == 4
    assert not (jail / "tree").exists()
    assert (outside / "secret").read_text() == "top secret\n"


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        (fs_read, {"path": "a"}),
        (fs_write, {"path": "a", "content": ""}),
        (fs_list, {}),
        (fs_delete, {"path": "a"}),
    ],
)
def test_fs_tools_need_a_jail(tool: Tool, args: dict[str, str], context: MakeContext) -> None:
    """Without a jail every fs tool refuses, naming itself."""
    with pytest.raises(JailRequiredError, match=rf"{tool.name} needs a jail"):
        tool.fn(**args, ctx=context(tool.name, jail=None))


def test_fs_tools_have_no_network(jail: Path) -> None:
    """Every fs tool is declared with a sandbox and network mode ``none``."""
    for tool in (fs_read, fs_write, fs_list, fs_delete):
        assert tool.sandbox is not None
        assert tool.sandbox.net.mode == "none"
    assert fs_read.idempotent and fs_list.idempotent
    assert not (fs_write.idempotent or fs_delete.idempotent)
