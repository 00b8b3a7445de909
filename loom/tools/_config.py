"""The tool plane's settings sections: ``[worker]`` and ``[tools."NAME"]``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import model_validator

from loom.config import Section
from loom.tools.sandbox import Sandbox

__all__ = ["ToolSettings", "WorkerSettings"]


class WorkerSettings(Section):
    """``[worker]``: how ``loom worker`` runs its tools."""

    jail: Path | None = None
    """Working directory of sandboxed tools whose policy names none (default: a temporary
    directory per run)."""
    sandbox_all: bool = False
    """Sandbox the tools that declare no policy too, with the default policy."""


class ToolSettings(Section):
    """``[tools."NAME"]``: one tool's overrides, over what its code declares."""

    sandbox: dict[str, Any] | None = None
    """Sections of its sandbox policy (``net``, ``fs``, ``limits``, ``env``), key by key;
    a tool declared without a policy gets the default one with these changes."""
    approval: bool | None = None
    """Whether each call waits for an approver."""

    @model_validator(mode="after")
    def _valid_policy(self) -> ToolSettings:
        if self.sandbox is not None:
            Sandbox().merged(self.sandbox)  # names the bad key
        return self
