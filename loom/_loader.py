"""Import a Python file or module a program names (``loom worker``, ``loom actor``,
``loom run``)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from loom.errors import LoomError, TargetError

__all__ = ["import_target"]


def import_target(where: str, error: type[LoomError] = TargetError) -> ModuleType:
    """Import a Python file (a path ending in ``.py`` or containing ``/``) or a module.

    Raises:
        error: no such file, or the import failed (the message says why).
    """
    if where.endswith(".py") or "/" in where:
        path = Path(where)
        name = path.stem
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None or not path.is_file():
            raise error(f"{where}: no such Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise error(f"{where}: import failed: {exc!r}") from exc
        return module
    try:
        return importlib.import_module(where)
    except Exception as exc:
        raise error(f"{where}: import failed: {exc!r}") from exc
