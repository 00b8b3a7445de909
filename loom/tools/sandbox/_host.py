"""What this host offers a sandbox from the outside: bubblewrap and a pids cgroup.

The in-process layers (rlimits, namespaces, Landlock, seccomp) are applied, and
reported, by the launcher itself; :func:`loom.tools.sandbox._check.check_host` gathers both.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from loom.errors import SandboxUnavailableError
from loom.tools.sandbox._code import imported_code
from loom.tools.sandbox._policy import Sandbox

__all__ = ["HostLayers", "confined_command", "probe_host"]

_CGROUP_V1 = Path("/sys/fs/cgroup/pids")
_CGROUP_ROOT = Path("/sys/fs/cgroup")


class HostLayers:
    """The outside layers found on this host.

    Attributes:
        bwrap: the path of a working ``bwrap``, or ``None``.
        bwrap_why: why bubblewrap is not used, when it is not.
        cgroup: a directory where a pids cgroup per sandbox can be made, or ``None``.
        cgroup_why: why not, when not.
    """

    def __init__(
        self,
        *,
        bwrap: str | None = None,
        bwrap_why: str = "",
        cgroup: Path | None = None,
        cgroup_why: str = "",
    ) -> None:
        self.bwrap = bwrap
        self.bwrap_why = bwrap_why
        self.cgroup = cgroup
        self.cgroup_why = cgroup_why
        self._groups = 0

    def bwrap_command(self, policy: Sandbox, jail: Path) -> list[str]:
        """The ``bwrap`` arguments that wrap a launcher: new pid, IPC, UTS and cgroup
        namespaces (and network, when the policy has none), the host's file system
        read-only, a private ``/tmp`` and ``/dev``, the jail and the policy's writable
        paths bound read-write, every capability dropped."""
        assert self.bwrap is not None
        args = [self.bwrap, "--die-with-parent", "--unshare-pid", "--unshare-ipc"]
        args += ["--unshare-uts", "--unshare-cgroup-try", "--cap-drop", "ALL"]
        args += ["--cap-add", "CAP_SETFCAP"]  # to map uid 0 in the per-call namespaces
        # a user namespace mapping our own ids: without it the launcher finds itself
        # unmapped (uid 65534) and cannot make the per-call user namespaces
        args += ["--unshare-user", "--uid", str(os.getuid()), "--gid", str(os.getgid())]
        if policy.net.mode == "none":
            args.append("--unshare-net")
        args += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
        code = {Path(p) for p in (sys.prefix, sys.base_prefix, *sys.path) if p}
        code.update(imported_code())  # editable installs are on no sys.path entry
        for path in sorted(code):
            if path.is_relative_to("/tmp") and path.exists():  # hidden by the private /tmp
                args += ["--ro-bind", str(path), str(path)]
        for path in (jail, *policy.fs.write):
            if path.exists():
                args += ["--bind", str(path), str(path)]
        return [*args, "--chdir", str(jail), "--"]

    def make_cgroup(self, pids_max: int) -> Path | None:
        """A new pids cgroup limited to ``pids_max`` tasks (``None`` when the host has no
        such cgroups). :meth:`enter_command` puts a command in it before it starts."""
        if self.cgroup is None:
            return None
        self._groups += 1
        group = self.cgroup / f"loom-sandbox-{os.getpid()}-{self._groups}"
        try:
            group.mkdir()
            (group / "pids.max").write_text(str(pids_max))
        except OSError:
            self.leave_cgroup(group)
            return None
        return group

    @staticmethod
    def enter_command(group: Path | None, command: list[str]) -> list[str]:
        """``command`` made to enter ``group`` first: a shell writes its own pid to the
        group, then execs it, so every process it starts is counted (a process that
        holds zmq threads must not use ``preexec_fn``)."""
        if group is None:
            return command
        return [
            "/bin/sh",
            "-c",
            'echo $$ > "$0" && exec "$@"',
            str(group / "cgroup.procs"),
            *command,
        ]

    def leave_cgroup(self, group: Path | None) -> bool:
        """Kill what is left in a sandbox's cgroup and try to remove it; True once it is
        gone (removal fails while killed processes are still exiting: try again)."""
        if group is None or not group.exists():
            return True
        with contextlib.suppress(OSError, ValueError):
            for pid in (group / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    os.kill(int(pid), signal.SIGKILL)
        try:
            group.rmdir()
        except OSError:
            return False
        return True

    def outside_report(self, group: Path | None) -> dict[str, str]:
        """The outside layers' lines of a sandbox's report."""
        pids = group / "pids.max" if group is not None else None
        return {
            "bwrap": (
                "pid, IPC, UTS namespaces; read-only root, private /tmp"
                if self.bwrap
                else f"unavailable: {self.bwrap_why}"
            ),
            "cgroup": (
                f"pids.max {pids.read_text().strip()} ({group})"
                if pids is not None and pids.exists()
                else f"unavailable: {self.cgroup_why or 'could not join'}"
            ),
        }


@functools.cache
def probe_host() -> HostLayers:
    """Find bubblewrap (it must run a command, not just exist; ``LOOM_SANDBOX_BWRAP=off``
    leaves it out) and a writable pids cgroup hierarchy. Cached: the host does not change
    under a running process."""
    bwrap, bwrap_why = _probe_bwrap()
    cgroup, cgroup_why = _probe_cgroup()
    return HostLayers(bwrap=bwrap, bwrap_why=bwrap_why, cgroup=cgroup, cgroup_why=cgroup_why)


def _probe_bwrap() -> tuple[str | None, str]:
    if os.environ.get("LOOM_SANDBOX_BWRAP", "").lower() in ("0", "off", "no", "false"):
        return None, "switched off (LOOM_SANDBOX_BWRAP)"
    path = shutil.which("bwrap")
    if path is None:
        return None, "bwrap is not installed (Debian: apt-get install bubblewrap)"
    try:
        done = subprocess.run(
            [path, "--ro-bind", "/", "/", "--dev", "/dev", "--unshare-pid", "true"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"bwrap does not run: {exc}"
    if done.returncode != 0:
        return None, f"bwrap does not run: {done.stderr.decode(errors='replace').strip()}"
    return path, ""


def _probe_cgroup() -> tuple[Path | None, str]:
    candidates = [_CGROUP_V1]
    own = _own_v2_cgroup()
    if own is not None:
        candidates.append(own)
    for base in candidates:
        if not (base / "cgroup.procs").exists() or not os.access(base, os.W_OK):
            continue
        if base != _CGROUP_V1 and "pids" not in (base / "cgroup.subtree_control").read_text():
            continue
        probe = base / f"loom-probe-{os.getpid()}"
        try:
            probe.mkdir()
            writable = (probe / "pids.max").exists()
        except OSError:
            continue
        finally:
            with contextlib.suppress(OSError):
                probe.rmdir()
        if writable:
            _sweep(base)
            return base, ""
    return None, "no writable pids cgroup (needs root or a delegated cgroup)"


def _own_v2_cgroup() -> Path | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                base = (
                    _CGROUP_ROOT / "unified"
                    if (_CGROUP_ROOT / "unified").is_dir()
                    else _CGROUP_ROOT
                )
                return base / line[3:].lstrip("/")
    return None


def _sweep(base: Path) -> None:
    """Remove the cgroups of sandboxes whose launcher died with its worker (SIGKILL)."""
    for group in base.glob("loom-sandbox-*"):
        pid = group.name.split("-")[2]  # the worker's
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(OSError):
                group.rmdir()


def confined_command(argv: list[str], policy: Sandbox, jail: Path) -> list[str]:
    """``argv`` run inside bubblewrap under ``policy``'s namespaces and file system rules
    (the host read-only, ``jail`` and the policy's writable paths read-write, a private
    ``/tmp``, no network when the policy has none), ending with its parent: for a whole
    program, such as an MCP server, rather than a tool call. ``jail`` is created.

    Raises:
        SandboxUnavailableError: bubblewrap does not run here (the reason says why).
    """
    host = probe_host()
    if host.bwrap is None:
        raise SandboxUnavailableError(f"cannot confine {argv[0]}: {host.bwrap_why}")
    jail.mkdir(parents=True, exist_ok=True)
    return [*host.bwrap_command(policy, jail.resolve()), *argv]
