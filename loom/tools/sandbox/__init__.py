"""Sandboxed tool processes: policies, the launcher, and what the host supports."""

from loom.tools.sandbox._check import check_host
from loom.tools.sandbox._host import confined_command
from loom.tools.sandbox._policy import EnvRules, FsRules, Limits, NetRules, Sandbox

__all__ = ["EnvRules", "FsRules", "Limits", "NetRules", "Sandbox", "check_host", "confined_command"]
