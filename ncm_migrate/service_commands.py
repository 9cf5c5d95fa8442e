"""A service's own management commands: `services/<svc>/commands/<name>.py` exposing `app`
(a Typer app) or `main` (a function), offered as `manage.py <svc>:<name>`.

Finding them reads only the disk (the help line is the module's docstring); a command's
module is imported only when it runs.
"""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, cast

from .discovery import find_service_dirs
from .errors import BadInput, NcmError
from .pyfiles import import_file
from .settings import service_folders

log = logging.getLogger(__name__)
_COMMAND_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class ServiceCommand:
    service: str
    name: str
    path: Path
    help: str

    @property
    def full_name(self) -> str:
        return f"{self.service}:{self.name}"


def find_service_commands(root: Path, env: str | None = None,
                          settings_dir: Path | None = None) -> list[ServiceCommand]:
    """Every service command of the monorepo at `root`, by service then name.

    Service folders come from the settings; when they cannot be read, from the default
    layout (`services/*`), so that `--help` still works and the error shows when a command
    that needs the settings runs.
    """
    try:
        service_dirs = service_folders(root, env, settings_dir)
    except NcmError:
        try:
            service_dirs = find_service_dirs(root, "services", "*")
        except NcmError:
            return []
    found: list[ServiceCommand] = []
    for folder in service_dirs:
        commands = folder / "commands"
        if not commands.is_dir():
            continue
        for path in sorted(commands.glob("*.py")):
            if not _COMMAND_NAME.match(path.stem):
                continue
            found.append(ServiceCommand(folder.name, path.stem, path, _help_of(path)))
    return found


def load_service_command(command: ServiceCommand) -> Callable[..., Any]:
    """The command's `app` (a Typer app) or else its `main` function.

    Raises `BadInput` (exit 2) when the module cannot be imported or has neither.
    """
    module = _import(command)
    app = getattr(module, "app", None)
    if callable(app):
        return cast(Callable[..., Any], app)
    main = getattr(module, "main", None)
    if callable(main):
        return cast(Callable[..., Any], main)
    raise BadInput(
        f"{command.path} defines neither `app` (a typer.Typer) nor `main` (a function), so "
        f"`{command.full_name}` has nothing to run."
    )


def _import(command: ServiceCommand) -> ModuleType:
    try:
        return import_file(command.path, f"ncm_commands_{command.service}_{command.path.stem}")
    except Exception as exc:
        raise BadInput(
            f"Command {command.full_name} ({command.path}) failed to import: "
            f"{type(exc).__name__}: {exc}."
        ) from exc


def _help_of(path: Path) -> str:
    """The first line of the module's docstring, read without importing it."""
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    except (SyntaxError, UnicodeDecodeError) as exc:
        log.debug("cannot read %s: %s", path, exc)
        return ""
    lines = (doc or "").strip().splitlines()
    return lines[0] if lines else ""
