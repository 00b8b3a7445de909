"""What a launcher knows of its confinement, as its zygote and call processes read it.

A structural type, so that the zygote and the call code need nothing from the launcher's
module (which starts the zygote): no circle between the three.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from loom.tools._tool import Tool
from loom.tools.sandbox._policy import Sandbox

__all__ = ["Confined"]


class Confined(Protocol):
    """The launcher's state a call's process inherits (``Launcher`` has it all)."""

    policy: Sandbox
    jail: Path
    max_payload: int
    tools: dict[str, Tool]
    protect: list[int]
    """Pids no call may signal or touch (the launcher's, the worker's...)."""
    any_async: bool
    call_namespaces: int
    """The ``CLONE_NEW*`` flags each call unshares (0: none): a user namespace, and a PID
    and an IPC namespace where the host allows."""
    landlock_abi: int
    last_cap: int
    seccomp: bytes | None
    """The call's seccomp filter, compiled to BPF in the zygote."""
    seccomp_ready: bool
