"""The library's verbs (`ncm_migrate.commands`) for the command modules, imported when a
command first calls one: `--help`, `--version` and a mistyped option never pay for them
(SQLAlchemy, Dynaconf, tenacity and the rest behind them).
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import TYPE_CHECKING


def lazy_module(name: str) -> ModuleType:
    """The module `name`, executed when one of its attributes is first read (the standard
    library's `importlib.util.LazyLoader`); a module already imported as it is."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


if TYPE_CHECKING:
    from .. import commands
else:
    commands = lazy_module("ncm_migrate.commands")

__all__ = ["commands", "lazy_module"]
