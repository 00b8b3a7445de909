"""The seccomp filter of a sandboxed call (libseccomp through ``pyseccomp``).

Everything is allowed except: system administration and kernel-attack surface (mounts,
modules, ``ptrace``, ``bpf``, ``kexec``, ``io_uring``...), new namespaces (``unshare``,
``setns``, ``clone`` with namespace flags; ``clone3`` answers ENOSYS so the C library
uses ``clone``), leaving the call's process group (``setsid``/``setpgid``), socket
families the network policy does not allow, signals to the launcher and the worker, and
making the kernel signal anyone on our behalf (``F_SETOWN``/``F_SETSIG``). Arguments are
compared on their low 32 bits, as the kernel reads them. Refused calls fail with ``EPERM``
(the tool sees ``PermissionError``); nothing is killed, so a tool can report what it tried.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterable
from typing import Any

from loom.tools.sandbox._policy import NetRules

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
_NAMESPACE_FLAGS: tuple[int, ...] = (
    0x80,  # CLONE_NEWTIME
    0x20000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)
_OWNER_COMMANDS = (8, 10, 15)
"""fcntl F_SETOWN, F_SETSIG, F_SETOWN_EX: SIGIO (or any signal) sent to a chosen process."""
_OWNER_IOCTLS = (0x8901, 0x8902)
"""FIOSETOWN, SIOCSPGRP: the same, by ioctl."""


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
    for family in range(_MAX_FAMILY):  # the kernel reads an int: compare 32 bits only
        if family not in allowed:
            flt.add_rule(denied, "socket", sc.Arg(0, sc.MASKED_EQ, 0xFFFFFFFF, family))
            if family != socket.AF_UNIX:  # a connected pair leads nowhere; asyncio needs it
                rule = sc.Arg(0, sc.MASKED_EQ, 0xFFFFFFFF, family)
                flt.add_rule(denied, "socketpair", rule)
    for flag in _NAMESPACE_FLAGS:  # clone() into new namespaces; clone3 hides its flags
        flt.add_rule(denied, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    _add(flt, sc.ERRNO(errno.ENOSYS), "clone3")  # the C library falls back to clone()
    for command in _OWNER_COMMANDS:  # signals by file ownership (SIGIO to any process)
        _add(flt, denied, "fcntl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, command))
    for request in _OWNER_IOCTLS:
        _add(flt, denied, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, request))
    targets = {pid & 0xFFFFFFFF for pid in (*protect, -1)}
    for name in _SIGNALS:
        for pid in targets:
            _add(flt, denied, name, sc.Arg(0, sc.MASKED_EQ, 0xFFFFFFFF, pid))
    return flt


def _add(flt: Any, action: int, name: str, *args: Any) -> None:
    with contextlib.suppress(OSError, ValueError):  # not a syscall on this architecture
        flt.add_rule(action, name, *args)
