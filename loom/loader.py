"""Import what a ``PATH_OR_MODULE[:attr]`` names (``loom worker``, ``loom actor``, ``loom run``)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from loom.errors import LoomError, TargetError

__all__ = ["import_target", "load_actor"]


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


def load_actor(target: str) -> type[Any]:
    """The ``Actor`` subclass ``PATH_OR_MODULE:ClassName`` names; without ``:ClassName``,
    the one subclass the file or module defines.

    Raises:
        TargetError: the import failed, or no (or more than one) such class is there.
    """
    from loom.actor import Actor  # here: loom.actor imports the tools, which import this

    where, _, attr = target.partition(":")
    module = import_target(where)
    if attr:
        found = getattr(module, attr, None)
        if not (isinstance(found, type) and issubclass(found, Actor)):
            raise TargetError(f"{target}: not an Actor subclass")
        return found
    defined = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, Actor)
        and value.__module__ == module.__name__
    ]
    if len(defined) != 1:
        names = ", ".join(sorted(c.__name__ for c in defined)) or "none"
        raise TargetError(f"{target}: name the class (PATH:ClassName); found {names}")
    return defined[0]
