"""Importing a user's Python file as a module: a revision when it is applied or rendered,
a service's models.py, a service command. Nothing else imports user code."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from .errors import Interrupted, RevisionFileError
from .model import Revision


def import_file(path: Path, module_name: str) -> ModuleType:
    """Import `path` as `module_name`, registered in `sys.modules` (and removed again if
    the import fails, whose exception propagates)."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def load_revision_module(rev: Revision) -> ModuleType:
    """Import one revision file; a file that cannot be imported is bad input (exit 2)."""
    digest = hashlib.sha256(str(rev.path).encode()).hexdigest()[:12]
    try:
        return import_file(rev.path, f"ncm_revision_{digest}")
    except Interrupted:
        raise
    except BaseException as exc:  # user code: SystemExit and KeyboardInterrupt too
        raise RevisionFileError(
            f"{rev.path}: revision {rev.service}:{rev.revision} cannot be imported: "
            f"{one_line(exc)}."
        ) from exc


def one_line(exc: BaseException) -> str:
    """What an exception raised by user code says, on one line: its type and first line."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0].rstrip('.')}" if lines else type(exc).__name__
