"""The seccomp filter of a sandboxed call (libseccomp through ``pyseccomp``).

Everything is allowed except: system administration and kernel-attack surface (mounts,
modules, ``ptrace``, ``bpf``, ``kexec``, ``io_uring``...), new namespaces (``unshare``,
``setns``, ``clone`` with namespace flags; ``clone3`` answers ENOSYS so the C library
uses ``clone``), children of the parent (``clone`` with ``CLONE_PARENT``), leaving the
call's process group (``setsid``/``setpgid``), socket families the network policy does
not allow, datagram socket pairs when UNIX sockets are off (one end can ``sendto()`` any
socket file), inet sockets of any protocol but TCP and UDP (MPTCP would bypass the port
rules), ``listen()`` (no call is a server), limits, priorities and scheduling of any
process but the caller (``prlimit64``, ``setpriority``, ``sched_set*``, ``ioprio_set``),
System V IPC when the call has no IPC namespace of its own, signals to the launcher and
the worker, and making the kernel signal anyone on our behalf (``F_SETOWN``/``F_SETSIG``).
Arguments the kernel reads as ``int`` are compared on their low 32 bits; a pid must be
exactly 0 (the caller). Refused calls fail with ``EPERM`` (the tool sees
``PermissionError``); nothing is killed, so a tool can report what it tried.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Iterable
from typing import Any

from loom.tools.sandbox._kernel import CLONE_PARENT
from loom.tools.sandbox._policy import NetRules

__all__ = ["DENIED_SYSCALLS", "build_filter", "compile_filter", "seccomp_available"]

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
    "listen",
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
_SOCK_TYPE_MASK = 0xF
_INET_TYPES = (socket.SOCK_STREAM, socket.SOCK_DGRAM)
_INET_PROTOCOLS = (0, socket.IPPROTO_TCP, socket.IPPROTO_UDP)
_SELF_ONLY = (
    "prlimit64", "sched_setaffinity", "sched_setscheduler", "sched_setparam", "sched_setattr",
)  # fmt: skip
"""Calls whose first argument is a pid: only 0, the caller, may be named."""
_WHO_SELF_ONLY = {"setpriority": 2, "ioprio_set": 3}
"""Calls whose second argument is a pid, group or user (``who``), with the value of
their first argument (``which``) that names a user: ``who`` must be 0 (the caller, its
group) and ``which`` not a user (0 would mean every process of the caller's user)."""
_SYSV_IPC = (
    "shmget", "shmat", "shmctl", "semget", "semop", "semtimedop", "semctl",
    "msgget", "msgsnd", "msgrcv", "msgctl",
    "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
)  # fmt: skip
"""System V IPC and POSIX message queues: objects of the IPC namespace, which outlive a
call that has no namespace of its own (and Landlock does not see them)."""
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


def build_filter(net: NetRules, protect: Iterable[int], *, private_ipc: bool) -> Any:
    """A ``pyseccomp.SyscallFilter`` for one sandbox; ``.load()`` it in the call's
    process after everything else is set up (loading needs ``no_new_privs``).

    Args:
        net: the network policy: which socket families stay allowed.
        protect: process ids (and, negated, process groups) that must not be signalled:
            the launcher's and the worker's.
        private_ipc: each call has an IPC namespace of its own (else System V IPC, which
            would outlive the call, is refused).
    """
    import pyseccomp as sc

    denied = sc.ERRNO(errno.EPERM)
    flt = sc.SyscallFilter(sc.ALLOW)
    for name in DENIED_SYSCALLS:
        _add(flt, denied, name)
    if not private_ipc:
        for name in _SYSV_IPC:
            _add(flt, denied, name)
    _sockets(flt, denied, net)
    for flag in (*_NAMESPACE_FLAGS, CLONE_PARENT):  # clone3 hides its flags: see below
        flt.add_rule(denied, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    _add(flt, sc.ERRNO(errno.ENOSYS), "clone3")  # the C library falls back to clone()
    for name in _SELF_ONLY:  # the full 64 bits must be 0: no high bits hiding a pid
        _add(flt, denied, name, sc.Arg(0, sc.NE, 0))
    for name, user in _WHO_SELF_ONLY.items():
        _add(flt, denied, name, sc.Arg(1, sc.NE, 0))
        _add(flt, denied, name, sc.Arg(0, sc.MASKED_EQ, 0xFFFFFFFF, user))
    for command in _OWNER_COMMANDS:  # signals by file ownership (SIGIO to any process)
        _add(flt, denied, "fcntl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, command))
    for request in _OWNER_IOCTLS:
        _add(flt, denied, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, request))
    targets = {pid & 0xFFFFFFFF for pid in (*protect, -1)}
    for name in _SIGNALS:
        for pid in targets:
            _add(flt, denied, name, sc.Arg(0, sc.MASKED_EQ, 0xFFFFFFFF, pid))
    return flt


def compile_filter(flt: Any) -> bytes:
    """The filter as the kernel's BPF program, compiled once (libseccomp's ``load()``
    compiles it again each time: about a millisecond a call process).
    :func:`loom.tools.sandbox._kernel.load_seccomp` installs it."""
    memory = os.memfd_create("loom-seccomp", os.MFD_CLOEXEC)  # no size limit, unlike a pipe
    with open(memory, "w+b") as program:
        flt.export_bpf(program)
        program.seek(0)
        return program.read()


def _sockets(flt: Any, denied: int, net: NetRules) -> None:
    """Socket families the policy does not allow; for inet ones, only stream and datagram
    sockets of protocol 0, TCP or UDP; datagram pairs when UNIX sockets are off."""
    import pyseccomp as sc

    allowed = set(_INET_FAMILIES) if net.mode != "none" else set()
    if net.unix:
        allowed.add(socket.AF_UNIX)
    for family in range(_MAX_FAMILY):  # the kernel reads an int: compare 32 bits only
        if family not in allowed:
            flt.add_rule(denied, "socket", sc.Arg(0, sc.MASKED_EQ, 0xFFFFFFFF, family))
            if family != socket.AF_UNIX:
                rule = sc.Arg(0, sc.MASKED_EQ, 0xFFFFFFFF, family)
                flt.add_rule(denied, "socketpair", rule)
    if not net.unix:  # a stream pair leads nowhere (asyncio's wakeup pipe needs one)
        unix = sc.Arg(0, sc.MASKED_EQ, 0xFFFFFFFF, socket.AF_UNIX)
        for kind in range(_SOCK_TYPE_MASK + 1):
            if kind != socket.SOCK_STREAM:
                kind_rule = sc.Arg(1, sc.MASKED_EQ, _SOCK_TYPE_MASK, kind)
                flt.add_rule(denied, "socketpair", unix, kind_rule)
    for family in allowed & {socket.AF_INET, socket.AF_INET6}:
        inet = sc.Arg(0, sc.MASKED_EQ, 0xFFFFFFFF, family)
        for kind in range(_SOCK_TYPE_MASK + 1):
            if kind not in _INET_TYPES:
                flt.add_rule(denied, "socket", inet, sc.Arg(1, sc.MASKED_EQ, _SOCK_TYPE_MASK, kind))
        # protocols compared on all 64 bits: above 17 (MPTCP is 262, or any value with
        # high bits set) or one of 1..16 other than TCP
        flt.add_rule(denied, "socket", inet, sc.Arg(2, sc.GT, max(_INET_PROTOCOLS)))
        for protocol in range(1, max(_INET_PROTOCOLS)):
            if protocol not in _INET_PROTOCOLS:
                flt.add_rule(denied, "socket", inet, sc.Arg(2, sc.EQ, protocol))


def _add(flt: Any, action: int, name: str, *args: Any) -> None:
    with contextlib.suppress(OSError, ValueError):  # not a syscall on this architecture
        flt.add_rule(action, name, *args)
