"""Linux calls the sandbox needs and Python does not wrap: Landlock, ``unshare``, id maps,
capabilities, ``no_new_privs``. Each raises ``OSError`` with the kernel's errno.

Only a process without threads should call these (the launcher, right after ``fork``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import signal
import stat
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "CLONE_NEWIPC",
    "CLONE_NEWNET",
    "CLONE_NEWPID",
    "CLONE_NEWUSER",
    "CLONE_PARENT",
    "check",
    "child_subreaper",
    "die_with_parent",
    "drop_capabilities",
    "landlock_abi",
    "landlock_restrict",
    "last_capability",
    "libc",
    "load_seccomp",
    "map_ids",
    "no_new_privs",
    "syscall_number",
    "unshare",
]

CLONE_PARENT = 0x00008000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4

_SYSCALLS = {  # the generic numbers; x86_64 keeps its own for the older calls
    "x86_64": {"capset": 126, "clone": 56, "create": 444, "add": 445, "restrict": 446},
    "aarch64": {"capset": 91, "clone": 220, "create": 444, "add": 445, "restrict": 446},
}

# Landlock access rights (include/uapi/linux/landlock.h)
_FS_EXECUTE = 1 << 0
_FS_WRITE_FILE = 1 << 1
_FS_READ_FILE = 1 << 2
_FS_READ_DIR = 1 << 3
_FS_TRUNCATE = 1 << 14
_FS_IOCTL_DEV = 1 << 15
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV
_READ_RIGHTS = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR | _FS_IOCTL_DEV
_NET_BIND_TCP = 1 << 0
_NET_CONNECT_TCP = 1 << 1
_SCOPE_ABSTRACT_UNIX = 1 << 0
_SCOPE_SIGNAL = 1 << 1
_RULE_PATH_BENEATH = 1
_RULE_NET_PORT = 2
_CREATE_RULESET_VERSION = 1

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


class _NetPortAttr(ctypes.Structure):
    _fields_ = (("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64))


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def check(result: int) -> int:
    """``result`` of a libc call, or ``OSError`` with its errno when it is negative."""
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def syscall_number(name: str) -> int:
    """This machine's number of the system call ``name`` (``OSError`` ENOSYS elsewhere)."""
    table = _SYSCALLS.get(platform.machine())
    if table is None:
        raise OSError(errno.ENOSYS, f"no syscall table for {platform.machine()}")
    return table[name]


def no_new_privs() -> None:
    """Neither this process nor its children can gain privileges again (setuid bits,
    file capabilities); Landlock and seccomp require it."""
    check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))


def die_with_parent() -> None:
    """Be killed (SIGKILL) when the parent process ends."""
    check(libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0))


def load_seccomp(program: bytes) -> None:
    """Install a compiled seccomp filter (classic BPF, 8 bytes an instruction) on this
    process and its future children; needs ``no_new_privs``."""
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buffer))
    check(libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0))


def child_subreaper() -> None:
    """Orphaned descendants become this process's children (to be reaped here), not
    init's."""
    check(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0))


def unshare(flags: int) -> None:
    """Move this process into new namespaces (``CLONE_NEW*``)."""
    check(libc.unshare(flags))


def map_ids(uid: int, gid: int) -> None:
    """In a fresh user namespace, map our own uid and gid to the same numbers inside."""
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")


def last_capability() -> int:
    """The highest capability number this kernel knows (read it before Landlock)."""
    return int(Path("/proc/sys/kernel/cap_last_cap").read_text())


def drop_capabilities(last: int) -> None:
    """Give up every capability up to ``last``: effective, permitted, inheritable, ambient
    and the bounding set (so a later ``exec`` cannot get them back)."""
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    for cap in range(last + 1):
        libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)  # EPERM without CAP_SETPCAP: none held
    header = _CapHeader(0x20080522, 0)
    data = (_CapData * 2)()
    check(libc.syscall(syscall_number("capset"), ctypes.byref(header), ctypes.byref(data)))


def landlock_abi() -> int:
    """The Landlock ABI version the kernel offers; 0 when it has none (or it is off)."""
    try:
        number = syscall_number("create")
    except OSError:
        return 0
    result = libc.syscall(number, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    return max(int(result), 0)


def landlock_restrict(
    abi: int,
    *,
    read: Iterable[Path] = (),
    write: Iterable[Path] = (),
    tcp_connect: Iterable[int] | None = None,
    restrict_fs: bool = True,
    restrict_net: bool = True,
    scope: bool = True,
) -> list[str]:
    """Restrict this process (and its future children) with Landlock, for good.

    Args:
        abi: :func:`landlock_abi`'s answer; rights the kernel does not know are left out.
        read: paths readable and executable below (missing paths are skipped).
        write: paths fully writable below.
        tcp_connect: TCP ports ``connect()`` may reach (``None``: any; ABI 4+). Binding a
            TCP port is always refused.
        restrict_fs: handle file system rights at all (False: only net and scopes).
        restrict_net: handle TCP rights (ABI 4+).
        scope: refuse signals to, and abstract UNIX sockets of, processes outside this
            domain (ABI 6+).

    Returns:
        What was enforced, for the report (``fs``, ``tcp``, ``scope``).

    Raises:
        OSError: the kernel refused the ruleset (``ENOSYS``/``EOPNOTSUPP``: no Landlock).
    """
    if abi < 1:
        raise OSError(errno.EOPNOTSUPP, "Landlock is not available")
    enforced: list[str] = []
    attr = _RulesetAttr()
    if restrict_fs:
        attr.handled_access_fs = _FS_BY_ABI[max(v for v in _FS_BY_ABI if v <= abi)]
        enforced.append("fs")
    if restrict_net and abi >= 4:
        attr.handled_access_net = _NET_BIND_TCP | (0 if tcp_connect is None else _NET_CONNECT_TCP)
        enforced.append("tcp")
    if scope and abi >= 6:
        attr.scoped = _SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL
        enforced.append("scope")
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = check(libc.syscall(syscall_number("create"), ctypes.byref(attr), size, 0))
    try:
        if restrict_fs:
            handled = attr.handled_access_fs
            for path in read:
                _add_path(ruleset, path, _READ_RIGHTS & handled)
            for path in write:
                _add_path(ruleset, path, handled)
        if attr.handled_access_net & _NET_CONNECT_TCP:
            for port in tcp_connect or ():
                rule = _NetPortAttr(_NET_CONNECT_TCP, port)
                check(
                    libc.syscall(
                        syscall_number("add"), ruleset, _RULE_NET_PORT, ctypes.byref(rule), 0
                    )
                )
        no_new_privs()
        check(libc.syscall(syscall_number("restrict"), ruleset, 0))
    finally:
        os.close(ruleset)
    return enforced


def _add_path(ruleset: int, path: Path, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):  # missing: nothing to allow
        return
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= _FILE_RIGHTS
        rule = _PathBeneathAttr(rights, fd)
        check(
            libc.syscall(syscall_number("add"), ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0)
        )
    finally:
        os.close(fd)
