"""Open files by a path that must stay inside a tool's jail.

Relative paths are relative to the jail; an absolute path is accepted when it lies in the
jail; ``..`` and symbolic links may move around inside the jail but never out of it.

Linux's ``openat2(2)`` with ``RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`` does the work in
the kernel. Where it is missing (older kernels, a seccomp filter that hides it) and where
it refuses an absolute symlink (it refuses them all, even those pointing into the jail),
a walk resolves the path one component at a time, each opened ``O_NOFOLLOW`` relative to
the directory before it, following symlinks by hand. Both check the file actually
opened, so a path cannot be swapped for a symlink between a check and its use; callers
then work on the descriptor (``fstat``, ``fdopen``, ``*at`` calls with ``dir_fd``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from pathlib import Path

from loom.errors import InvalidParamsError, JailRequiredError, PathEscapeError
from loom.tools._tool import ToolContext

__all__ = [
    "JailRequiredError",
    "PathEscapeError",
    "jail_of",
    "make_dirs",
    "open_in_jail",
    "open_parent",
    "relative",
    "resolve",
]

_SYS_OPENAT2 = 437
"""The same number on every architecture Linux added it to after 5.6 (x86-64, arm64...)."""
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08
_MAX_SYMLINKS = 40
"""Symlinks one resolution may follow, as the kernel allows (``ELOOP`` past it)."""
_RETRIES = 8
"""``openat2`` answers ``EAGAIN`` when a rename raced with ``..``; it is then retried."""


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


class _Openat2:
    """The ``openat2`` system call through libc's ``syscall``, while the kernel has it."""

    def __init__(self) -> None:
        self.available = True
        self._syscall = ctypes.CDLL(None, use_errno=True).syscall
        self._syscall.restype = ctypes.c_long

    def open(self, dir_fd: int, path: str, flags: int, mode: int) -> int | None:
        """The descriptor, or ``None`` when the kernel lacks ``openat2``.

        Raises:
            OSError: the open failed; ``EXDEV`` means the path leaves ``dir_fd``.
        """
        creates = flags & os.O_CREAT or flags & os.O_TMPFILE == os.O_TMPFILE
        how = _OpenHow(
            flags | os.O_CLOEXEC, mode if creates else 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS
        )
        encoded = os.fsencode(path)
        for _ in range(_RETRIES):
            fd = self._syscall(
                ctypes.c_long(_SYS_OPENAT2),
                ctypes.c_int(dir_fd),
                ctypes.c_char_p(encoded),
                ctypes.byref(how),
                ctypes.c_size_t(ctypes.sizeof(how)),
            )
            if fd >= 0:
                return int(fd)
            code = ctypes.get_errno()
            if code == errno.ENOSYS:
                self.available = False
                return None
            if code != errno.EAGAIN:
                raise OSError(code, os.strerror(code), path)
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), path)


_openat2 = _Openat2()


def jail_of(ctx: ToolContext) -> Path:
    """The call's jail.

    Raises:
        JailRequiredError: the call has no jail.
    """
    if ctx.jail is None:
        raise JailRequiredError(
            f"{ctx.tool} needs a jail (a working directory to confine it to) and this call "
            "has none: serve it with a sandbox policy"
        )
    return ctx.jail


def relative(jail: Path, path: str) -> str:
    """``path`` relative to the jail (``.`` for the jail itself), not yet resolved.

    Raises:
        PathEscapeError: ``path`` is absolute and not below the jail.
        InvalidParamsError: ``path`` contains a NUL byte.
    """
    if "\0" in path:
        raise InvalidParamsError(f"path {path!r} contains a NUL byte")
    if not os.path.isabs(path):
        return path or "."
    parts = _parts(path)
    for root in _roots(jail):
        if parts[: len(root)] == root:
            return "/".join(parts[len(root) :]) or "."
    raise PathEscapeError(f"{path!r} is an absolute path outside the jail {str(jail)!r}")


def open_in_jail(jail: Path, path: str, flags: int, mode: int = 0o644) -> int:
    """Open ``path`` inside the jail, like ``os.open``.

    Args:
        jail: the directory the path may not leave.
        path: relative to the jail, or absolute and inside it.
        flags: ``os.O_*`` flags (``O_CLOEXEC`` is added). Symlinks are followed, the
            last one too, as long as they stay in the jail; to act on a symlink itself,
            use :func:`open_parent` and a ``*at`` call.
        mode: permissions of a file ``O_CREAT`` makes (the umask applies).

    Returns:
        The new file descriptor; the caller closes it.

    Raises:
        PathEscapeError: the path, or a symlink on the way, leads outside the jail.
        InvalidParamsError: the path contains a NUL byte.
        OSError: the open failed (``FileNotFoundError``, ``IsADirectoryError``...).
    """
    rel = relative(jail, path)
    root_fd = os.open(jail, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _openat2.available:
            try:
                fd = _openat2.open(root_fd, rel, flags, mode)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM):
                    raise
                # EXDEV: out of the jail, or an absolute symlink the walk may accept.
                # EPERM: a seccomp filter may refuse openat2 itself; the walk decides.
            else:
                if fd is not None:
                    return fd
        return _Walk(jail, root_fd, path).open(rel, flags | os.O_CLOEXEC, mode)
    finally:
        os.close(root_fd)


def open_parent(jail: Path, path: str) -> tuple[int, str]:
    """An ``O_PATH`` descriptor of the directory holding ``path``'s last component, and
    that component's name, for ``*at`` calls that must not follow it (unlink, mkdir).

    Raises:
        PathEscapeError: the directory is outside the jail.
        InvalidParamsError: the last component is ``.`` or ``..`` (or the path is empty).
        OSError: the directory cannot be opened.
    """
    parent, _, name = relative(jail, path).rstrip("/").rpartition("/")
    if name in ("", ".", ".."):
        raise InvalidParamsError(f"path {path!r} must end in a name, not {name or '/'!r}")
    fd = open_in_jail(jail, parent or ".", os.O_PATH | os.O_DIRECTORY)
    return fd, name


def make_dirs(jail: Path, path: str, mode: int = 0o755) -> None:
    """Create the directory ``path`` and its missing parents inside the jail.

    Raises:
        PathEscapeError: a component leads outside the jail.
        InvalidParamsError: the path contains a NUL byte.
        OSError: a directory cannot be made, or a component is not a directory.
    """
    parts = _parts(relative(jail, path))
    for index, name in enumerate(parts):
        if name == "..":
            continue
        parent = "/".join(parts[:index]) or "."
        fd = open_in_jail(jail, parent, os.O_PATH | os.O_DIRECTORY)
        try:
            os.mkdir(name, mode, dir_fd=fd)
        except FileExistsError:
            pass
        finally:
            os.close(fd)
    os.close(open_in_jail(jail, path, os.O_PATH | os.O_DIRECTORY))


def resolve(jail: Path, path: str) -> Path:
    """Check that ``path`` stays in the jail, whether or not it exists, and return it as
    an absolute path below the jail (normalized lexically; symlinks are checked, not
    substituted). The longest existing prefix is resolved with symlinks followed; the
    missing rest may not climb out with ``..``.

    Raises:
        PathEscapeError: the path, or a symlink in its existing part, leads outside.
        InvalidParamsError: the path contains a NUL byte.
    """
    rel = relative(jail, path)
    normal = os.path.normpath(rel)
    if normal == ".." or normal.startswith("../"):
        raise PathEscapeError(f"{path!r} climbs above the jail with '..'")
    probe = rel.rstrip("/") or "."
    while True:
        try:
            os.close(open_in_jail(jail, probe, os.O_PATH))
        except (FileNotFoundError, NotADirectoryError):
            parent = os.path.dirname(probe)
            if parent in ("", probe):
                break
            probe = parent
        else:
            break
    return jail if normal == "." else jail / normal


class _Walk:
    """Resolve a path one component at a time below a directory descriptor."""

    def __init__(self, jail: Path, root_fd: int, shown: str) -> None:
        self._roots = _roots(jail)
        self._root_fd = root_fd
        self._shown = shown
        self._stack: list[int] = []
        """Descriptors of the directories entered below the root, innermost last."""
        self._links = 0

    def open(self, rel: str, flags: int, mode: int) -> int:
        try:
            return self._open(rel, flags, mode)
        finally:
            for fd in self._stack:
                os.close(fd)

    def _open(self, rel: str, flags: int, mode: int) -> int:
        pending = _parts(rel)
        while pending:
            name = pending.pop(0)
            if name == "..":
                self._up()
                continue
            if not pending:  # the last component
                target = self._last(name, flags, mode)
                if isinstance(target, int):
                    return target
            else:
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._cwd)
                if not stat.S_ISLNK(os.fstat(fd).st_mode):
                    self._stack.append(fd)  # a file here fails at the next component
                    continue
                os.close(fd)
                target = os.readlink(name, dir_fd=self._cwd)
            pending[:0] = self._follow(name, target)
        return os.open(".", flags, mode, dir_fd=self._cwd)

    @property
    def _cwd(self) -> int:
        return self._stack[-1] if self._stack else self._root_fd

    def _up(self) -> None:
        if not self._stack:
            raise PathEscapeError(f"{self._shown!r} climbs above the jail with '..'")
        os.close(self._stack.pop())

    def _last(self, name: str, flags: int, mode: int) -> int | str:
        """Open the last component (a descriptor), or, when it is a symlink, return its
        target."""
        try:
            fd = os.open(name, flags | os.O_NOFOLLOW, mode, dir_fd=self._cwd)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            try:
                return os.readlink(name, dir_fd=self._cwd)
            except OSError:
                raise exc from None
        if flags & os.O_PATH and stat.S_ISLNK(os.fstat(fd).st_mode):
            os.close(fd)
            return os.readlink(name, dir_fd=self._cwd)
        return fd

    def _follow(self, name: str, target: str) -> list[str]:
        """The components that replace symlink ``name``: a relative target continues
        from the symlink's directory, an absolute one from the jail when it lies there."""
        self._links += 1
        if self._links > _MAX_SYMLINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), self._shown)
        if not os.path.isabs(target):
            return _parts(target)
        parts = _parts(target)
        for root in self._roots:
            if parts[: len(root)] == root:
                for fd in self._stack:
                    os.close(fd)
                self._stack.clear()
                return parts[len(root) :]
        raise PathEscapeError(
            f"{self._shown!r}: symlink {name!r} points outside the jail (to {target!r})"
        )


def _parts(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def _roots(jail: Path) -> list[list[str]]:
    """The jail's components as given (made absolute) and with symlinks resolved."""
    given = _parts(os.path.abspath(jail))
    real = _parts(os.path.realpath(jail))
    return [given] if given == real else [given, real]
