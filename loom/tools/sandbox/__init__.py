"""Sandboxed tool processes: policies, the launcher, and what the host supports."""

from loom.tools.sandbox.policy import EnvRules, FsRules, Limits, NetRules, Sandbox

__all__ = ["EnvRules", "FsRules", "Limits", "NetRules", "Sandbox"]
