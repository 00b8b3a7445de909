"""The seccomp filter of a sandboxed call (libseccomp through ``pyseccomp``).

Everything is allowed except: system administration and kernel-attack surface (mounts,
modules, ``ptrace``, ``bpf``, ``kexec``, ``io_uring``...), new namespaces, leaving the
call's process group (``setsid``/``setpgid``), socket families the network policy does
not allow, and signals to the launcher and the worker. Refused calls fail with ``EPERM``
(the tool sees ``PermissionError``); nothing is killed, so a tool can report what it tried.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterable
from typing import Any

from loom.tools.sandbox.policy import NetRules

__all__ = ["DENIED_SYSCALLS", "build_filter", "seccomp_available"]

DENIED_SYSCALLS = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "mount_setattr",
    "setns",
    "unshare",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "syslog",
    "keyctl",
    "add_key",
    "request_key",
    "name_to_handle_at",
    "open_by_handle_at",
    "iopl",
    "ioperm",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "personality",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "fanotify_init",
    "setsid",
    "setpgid",
)
_SIGNALS = ("kill", "tkill", "tgkill", "pidfd_open", "rt_sigqueueinfo", "rt_tgsigqueueinfo")
_MAX_FAMILY = 46  # AF_MAX on current kernels; families above it do not exist
_INET_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK)


def seccomp_available() -> str | None:
    """``None`` if a filter can be built here, else why not."""
    try:
        import pyseccomp
    except (ImportError, OSError, RuntimeError) as exc:  # libseccomp.so.2 is missing
        return f"pyseccomp unavailable: {exc}"
    try:
        pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    except OSError as exc:
        return f"libseccomp refused: {exc}"
    return None


def build_filter(net: NetRules, protect: Iterable[int]) -> Any:
    """A ``pyseccomp.SyscallFilter`` for one sandbox; ``.load()`` it in the call's
    process after everything else is set up (loading needs ``no_new_privs``).

    Args:
        net: the network policy: which socket families stay allowed.
        protect: process ids (and, negated, process groups) that must not be signalled:
            the launcher's and the worker's.
    """
    import pyseccomp as sc

    denied = sc.ERRNO(errno.EPERM)
    flt = sc.SyscallFilter(sc.ALLOW)
    for name in DENIED_SYSCALLS:
        _add(flt, denied, name)
    allowed = set(_INET_FAMILIES) if net.mode != "none" else set()
    if net.unix:
        allowed.add(socket.AF_UNIX)
    for family in range(_MAX_FAMILY):
        if family not in allowed:
            flt.add_rule(denied, "socket", sc.Arg(0, sc.EQ, family))
    targets = {pid & 0xFFFFFFFF for pid in (*protect, -1)}
    for name in _SIGNALS:
        for pid in targets:
            _add(flt, denied, name, sc.Arg(0, sc.MASKED_EQ, 0xFFFFFFFF, pid))
    return flt


def _add(flt: Any, action: int, name: str, *args: Any) -> None:
    with contextlib.suppress(OSError, ValueError):  # not a syscall on this architecture
        flt.add_rule(action, name, *args)
