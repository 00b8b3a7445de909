"""Where the code a process imported lives: what a sandbox must keep readable (and
visible, inside bubblewrap's private ``/tmp``) for its tools to run."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["code_of", "imported_code"]


def imported_code() -> set[Path]:
    """The code of every module imported so far (see :func:`code_of`)."""
    found = set()
    for module in list(sys.modules.values()):
        code = code_of(module)
        if code is not None:
            found.add(code)
    return found


def code_of(module: Any) -> Path | None:
    """What must stay readable for ``module`` to work: its top-level package's directory
    (when the path really ends in the package's names), else its own file; the archive
    of a module imported from a zip."""
    archive = getattr(getattr(module, "__loader__", None), "archive", None)
    if isinstance(archive, str):
        return Path(archive)
    file = getattr(module, "__file__", None)
    name = getattr(module, "__name__", "")
    if not isinstance(file, str) or not isinstance(name, str) or not os.path.isabs(file):
        return None
    path = Path(file)
    packages = name.split(".")[: -1 if not hasattr(module, "__path__") else None]
    directory = path.parent
    for package in reversed(packages):  # a.b.c in /x/a/b/c.py: /x/a/b, then /x/a
        if directory.name != package:
            return path  # not laid out as its name says: the file alone
        if package != packages[0]:
            directory = directory.parent
    return directory if packages else path
