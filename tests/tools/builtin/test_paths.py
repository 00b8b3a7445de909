"""Paths confined to a jail: ``..``, absolute paths and symlinks may not lead out."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from conftest import MakeContext

from loom.errors import InvalidParamsError
from loom.tools.builtin._paths import (
    JailRequiredError,
    PathEscapeError,
    jail_of,
    make_dirs,
    open_in_jail,
    open_parent,
    relative,
    resolve,
)

pytestmark = pytest.mark.usefixtures("resolver")


def read(jail: Path, path: str) -> str:
    fd = open_in_jail(jail, path, os.O_RDONLY)
    with os.fdopen(fd) as file:
        return file.read()


def test_relative_path_opens_inside(jail: Path) -> None:
    """A relative path is relative to the jail."""
    (jail / "sub").mkdir()
    (jail / "sub" / "a.txt").write_text("a")
    assert read(jail, "sub/a.txt") == "a"


def test_absolute_path_inside_is_accepted(jail: Path) -> None:
    """An absolute path below the jail is accepted."""
    (jail / "a.txt").write_text("a")
    assert read(jail, str(jail / "a.txt")) == "a"


def test_absolute_path_outside_is_refused(jail: Path, outside: Path) -> None:
    """An absolute path elsewhere is refused."""
    with pytest.raises(PathEscapeError, match="outside the jail"):
        open_in_jail(jail, str(outside / "secret"), os.O_RDONLY)


def test_dotdot_above_the_jail_is_refused(jail: Path, outside: Path) -> None:
    """``..`` may not climb above the jail, even to come back in."""
    with pytest.raises(PathEscapeError):
        open_in_jail(jail, "../outside/secret", os.O_RDONLY)
    (jail / "a.txt").write_text("a")
    with pytest.raises(PathEscapeError):
        open_in_jail(jail, f"../{jail.name}/a.txt", os.O_RDONLY)


def test_dotdot_inside_the_jail_is_fine(jail: Path) -> None:
    """``..`` that stays inside the jail resolves normally."""
    (jail / "sub").mkdir()
    (jail / "a.txt").write_text("a")
    assert read(jail, "sub/../a.txt") == "a"


def test_symlink_out_is_refused(jail: Path, outside: Path) -> None:
    """Absolute and relative symlinks to outside are refused, as file or directory."""
    (jail / "abs").symlink_to(outside / "secret")
    (jail / "rel").symlink_to("../outside/secret")
    (jail / "dir").symlink_to(outside)
    for path in ("abs", "rel", "dir/secret"):
        with pytest.raises(PathEscapeError, match=r"(outside|above) the jail"):
            open_in_jail(jail, path, os.O_RDONLY)


def test_symlink_inside_is_followed(jail: Path) -> None:
    """Relative and absolute symlinks to a place in the jail work."""
    (jail / "sub").mkdir()
    (jail / "sub" / "a.txt").write_text("a")
    (jail / "rel").symlink_to("sub/a.txt")
    (jail / "abs").symlink_to(jail / "sub")
    (jail / "sub" / "up").symlink_to("../sub/a.txt")
    assert read(jail, "rel") == "a"
    assert read(jail, "abs/a.txt") == "a"
    assert read(jail, "sub/up") == "a"


def test_creating_through_a_dangling_symlink_out_is_refused(jail: Path, outside: Path) -> None:
    """O_CREAT through a symlink to a missing file outside creates nothing."""
    (jail / "link").symlink_to(outside / "new")
    with pytest.raises(PathEscapeError):
        open_in_jail(jail, "link", os.O_WRONLY | os.O_CREAT)
    assert not (outside / "new").exists()


def test_o_path_follows_the_last_symlink(jail: Path, outside: Path) -> None:
    """O_PATH opens a symlink's target (checked), not the link."""
    (jail / "real").write_text("")
    (jail / "link").symlink_to("real")
    (jail / "out").symlink_to(outside / "secret")
    fd = open_in_jail(jail, "link", os.O_PATH)
    try:
        assert stat.S_ISREG(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
    with pytest.raises(PathEscapeError):
        open_in_jail(jail, "out", os.O_PATH)


def test_symlink_loop_fails(jail: Path) -> None:
    """A symlink loop ends in ELOOP, not a hang."""
    (jail / "a").symlink_to("b")
    (jail / "b").symlink_to("a")
    with pytest.raises(OSError) as caught:
        open_in_jail(jail, "a", os.O_RDONLY)
    assert caught.value.errno == errno.ELOOP


def test_missing_file_is_file_not_found(jail: Path) -> None:
    """A missing file inside raises the usual FileNotFoundError."""
    with pytest.raises(FileNotFoundError):
        open_in_jail(jail, "missing", os.O_RDONLY)


def test_nul_byte_is_invalid(jail: Path) -> None:
    """A NUL byte cannot hide the rest of a path."""
    with pytest.raises(InvalidParamsError, match="NUL"):
        open_in_jail(jail, "a\0/../../x", os.O_RDONLY)


def test_relative_maps_absolute_paths_into_the_jail(jail: Path) -> None:
    """relative() turns an absolute path in the jail into a relative one."""
    assert relative(jail, str(jail)) == "."
    assert relative(jail, f"{jail}/a/b") == "a/b"
    assert relative(jail, "") == "."


def test_resolve_accepts_missing_paths_inside(jail: Path) -> None:
    """resolve() checks paths that do not exist yet and returns them under the jail."""
    (jail / "sub").mkdir()
    assert resolve(jail, "sub/new/file") == jail / "sub" / "new" / "file"
    assert resolve(jail, ".") == jail


def test_resolve_refuses_escapes(jail: Path, outside: Path) -> None:
    """resolve() refuses ``..`` out, a symlink out in the existing part, absolute paths."""
    (jail / "dir").symlink_to(outside)
    for path in ("missing/../../x", "dir/new", "dir", str(outside), ".."):
        with pytest.raises(PathEscapeError):
            resolve(jail, path)


def test_make_dirs_stays_inside(jail: Path, outside: Path) -> None:
    """make_dirs() creates inside and refuses to create through a symlink out."""
    make_dirs(jail, "a/b/c")
    assert (jail / "a" / "b" / "c").is_dir()
    (jail / "dir").symlink_to(outside)
    with pytest.raises(PathEscapeError):
        make_dirs(jail, "dir/new")
    assert not (outside / "new").exists()


def test_open_parent_refuses_dot_names(jail: Path) -> None:
    """open_parent() needs a name to end the path."""
    for path in (".", "a/..", ""):
        with pytest.raises(InvalidParamsError):
            open_parent(jail, path)


def test_jail_of_requires_a_jail(context: MakeContext) -> None:
    """A call without a jail is refused with a message naming the tool."""
    with pytest.raises(JailRequiredError, match=r"fs\.read needs a jail"):
        jail_of(context("fs.read", jail=None))
