"""Children of ``loom run`` end with it, however it ends (SIGKILL included).

The supervisor starts each child (broker, workers, actors, the desktop) in a session of
its own, so a signal to the supervisor's process group does not reach them twice; a
supervisor killed outright would then leave them running. It names itself in
``$LOOM_PARENT_PID``; a Loom program that finds it asks the kernel (Linux's
``PR_SET_PDEATHSIG``) for SIGTERM when that parent dies, which each program already
treats as "stop cleanly".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

__all__ = ["PARENT", "die_with_parent"]

PARENT = "LOOM_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Under ``loom run``: SIGTERM this process when the supervisor dies (at once, if it
    is gone already). Elsewhere, or off Linux, nothing."""
    wanted = os.environ.pop(PARENT, "")
    if not wanted.isdigit() or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return  # no such call here: the child outlives a killed supervisor, as before
    if os.getppid() != int(wanted):  # it died before the request took
        os.kill(os.getpid(), signal.SIGTERM)
