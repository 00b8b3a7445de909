"""``Sandbox``: what a tool's process may touch (files, network, limits, environment).

A policy is declared with the tool (``@tool(sandbox=Sandbox(...))``) and can be overridden
per tool in configuration (``[tools."fs.read".sandbox]``); :meth:`Sandbox.merged` applies
such an override. The launcher (``loom.tools.sandbox._launcher``) enforces it with the
layers the host supports; the built-in tools also check it themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, field_validator

__all__ = ["EnvRules", "FsRules", "Limits", "NetRules", "Sandbox"]


class _Rules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FsRules(_Rules):
    """File system access.

    Attributes:
        jail: the tool's working directory, read-write, created when the sandbox starts;
            relative paths resolve inside it. ``None``: a private temporary directory.
        read: paths readable (and executable) below; Python's own installation and Loom's
            package are added by the launcher.
        write: paths readable and writable below, besides the jail.
    """

    jail: Path | None = None
    read: tuple[Path, ...] = ()
    write: tuple[Path, ...] = ()

    @field_validator("read", "write")
    @classmethod
    def _absolute(cls, paths: tuple[Path, ...]) -> tuple[Path, ...]:
        for path in paths:
            if not path.is_absolute():
                raise ValueError(f"{path}: sandbox paths must be absolute")
        return paths


class NetRules(_Rules):
    """Network access.

    Attributes:
        mode: ``none`` (no sockets at all, a private network namespace where the host
            allows one), ``loopback`` (TCP/UDP sockets; Loom's HTTP client connects to
            loopback addresses only) or ``hosts`` (sockets; Loom's HTTP client connects to
            ``hosts`` only).
        hosts: host names (``example.com``, ``*.example.com``) or IP addresses allowed in
            ``hosts`` mode.
        ports: TCP ports ``connect()`` may reach, enforced by the kernel (Landlock) where
            the host supports it; empty: any port (``hosts`` mode defaults to 80 and 443).
        unix: may open UNIX-domain sockets (connect to local daemons). Off by default:
            Landlock does not cover ``connect()`` on a socket file, seccomp does.
    """

    mode: Literal["none", "loopback", "hosts"] = "none"
    hosts: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    unix: bool = False

    @field_validator("ports")
    @classmethod
    def _ports(cls, ports: tuple[int, ...]) -> tuple[int, ...]:
        for port in ports:
            if not 0 < port < 65536:
                raise ValueError(f"port {port} is not between 1 and 65535")
        return ports

    def tcp_ports(self) -> tuple[int, ...]:
        """The ports the kernel lets ``connect()`` reach (empty: any, ``none``: no port)."""
        if self.mode == "hosts" and not self.ports:
            return (80, 443)
        return self.ports


class Limits(_Rules):
    """Resource limits of one call's process.

    Attributes:
        cpu_seconds: CPU time (RLIMIT_CPU); the process is killed past it.
        memory_mb: address space (RLIMIT_AS); allocations past it fail.
        open_files: file descriptors (RLIMIT_NOFILE).
        file_size_mb: the largest file the call may write (RLIMIT_FSIZE).
        processes: processes and threads the call may run at once, itself included
            (RLIMIT_NPROC, counted in a private user namespace where the host allows one).
        wall_seconds: real time; the launcher kills the call's process group past it.
        output_kb: what the call prints (standard output and error, one pipe) reaches the
            worker's log, line by line with the tool and call, up to this many KiB; the
            rest is counted and dropped.
    """

    cpu_seconds: PositiveFloat = 10.0
    memory_mb: PositiveInt = 1024
    open_files: PositiveInt = 256
    file_size_mb: PositiveInt = 64
    processes: PositiveInt = 16
    wall_seconds: PositiveFloat = 30.0
    output_kb: PositiveInt = 64


class EnvRules(_Rules):
    """The environment of the tool's process: cleared, then ``keep`` copied from the
    worker's environment (when set there), then ``set``. ``HOME`` and ``TMPDIR`` point at
    the jail; ``PATH`` is ``/usr/local/bin:/usr/bin:/bin`` unless set here."""

    keep: tuple[str, ...] = ("LANG", "LC_ALL", "TZ")
    set: dict[str, str] = Field(default_factory=dict)


class Sandbox(_Rules):
    """A tool's sandbox policy. Every part has safe defaults: no network, no file access
    beyond the jail and Python itself, bounded CPU, memory, files, processes and time, and
    an empty environment.

    Example::

        @tool(sandbox=Sandbox(net=NetRules(mode="hosts", hosts=("api.github.com",))))
        async def fetch_issue(number: int) -> dict: ...
    """

    fs: FsRules = FsRules()
    net: NetRules = NetRules()
    limits: Limits = Limits()
    env: EnvRules = EnvRules()

    def merged(self, override: dict[str, Any]) -> Sandbox:
        """This policy with ``override`` (a config table: ``{"limits": {"cpu_seconds":
        2}}``) applied key by key; sections not named keep their values.

        Raises:
            pydantic.ValidationError: a key or value is invalid.
        """
        data = self.model_dump()
        for section, values in override.items():
            if isinstance(values, dict) and isinstance(data.get(section), dict):
                data[section] = {**data[section], **values}
            else:
                data[section] = values
        return Sandbox.model_validate(data)
