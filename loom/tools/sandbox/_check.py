"""``loom sandbox check``: which layers this host applies, and whether they hold.

A launcher is started with the default policy (or the one given); its report lists each
layer as applied or unavailable (and why). Then one call of :func:`probe_escapes` tries
a few escapes from inside and says what stopped each.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

from loom.tools._tool import ToolContext, tool
from loom.tools.sandbox._host import probe_host
from loom.tools.sandbox._policy import Sandbox
from loom.tools.sandbox._runner import SandboxRunner

__all__ = ["check_host", "probe_escapes"]


@tool(name="loom.sandbox.probe", sandbox=Sandbox())
def probe_escapes(outside: str) -> dict[str, str]:
    """Try to escape the sandbox in a few ways; what happened to each attempt.

    Args:
        outside: a readable file outside the jail.
    """
    attempts: dict[str, Any] = {
        "read a file outside the jail": lambda: Path(outside).read_bytes(),
        "write outside the jail": lambda: Path(outside).with_suffix(".loom").write_text("x"),
        "open a TCP connection": lambda: socket.create_connection(("127.0.0.1", 22), 1),
        "open a UNIX socket": lambda: socket.socket(socket.AF_UNIX),
        "read /proc of the parent": lambda: Path(f"/proc/{os.getppid()}/environ").read_bytes(),
        "signal the parent": lambda: os.kill(os.getppid(), 0),
    }
    results: dict[str, str] = {}
    for name, attempt in attempts.items():
        try:
            attempt()
        except OSError as exc:
            code = errno.errorcode.get(exc.errno or 0, "?")
            results[name] = f"blocked ({code})"
        else:
            results[name] = "NOT BLOCKED"
    return results


async def check_host(policy: Sandbox | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Start a sandbox, return its layer report and the escape probe's results.

    Raises:
        SandboxUnavailableError: the launcher could not start here.
        ToolError: the probe call failed.
    """
    policy = policy or probe_escapes.sandbox or Sandbox()
    with tempfile.TemporaryDirectory(prefix="loom-check-") as jail:
        runner = SandboxRunner(
            [probe_escapes],
            policy,
            Path(jail),
            probe_host(),
            max_payload=1 << 20,
            progress=lambda token, data: None,
        )
        try:
            report = await runner.start()
            context = ToolContext(1, probe_escapes.name, 10.0, lambda token, data: None)
            data = await runner.call(1, probe_escapes, {"outside": _outside_file()}, context)
        finally:
            await runner.close()
    from loom.protocol import decode_value

    return report, decode_value(data)


def _outside_file() -> str:
    for candidate in ("/etc/hostname", "/etc/os-release", "/etc/passwd"):
        if os.access(candidate, os.R_OK):
            return candidate
    return "/etc/passwd"
