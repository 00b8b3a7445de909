"""Defaults read at the program's edge (CLI, ``Actor.run``); the library takes arguments."""

from __future__ import annotations

import os

__all__ = ["DEFAULT_BROKER", "broker_address"]

DEFAULT_BROKER = "tcp://127.0.0.1:7700"


def broker_address(explicit: str | None = None, fallback: str = DEFAULT_BROKER) -> str:
    """``explicit`` if given, else ``$LOOM_BROKER``, else ``fallback``."""
    return explicit or os.environ.get("LOOM_BROKER") or fallback
