"""Where a monorepo is, and loading it for one environment: its settings (`settings.py`,
the Dynaconf loader), then its revisions and graph (`project.read_project`).
"""

from __future__ import annotations

import os
from pathlib import Path

from .project import Project, read_project
from .settings import load_settings

# A path as Python callers give it: text or any path-like object.
PathArg = str | os.PathLike[str]


def find_root(start: PathArg | None = None) -> Path:
    """`NCM_ROOT`, else the nearest folder upwards holding `manage.py` or
    `settings/settings.toml`, else the current folder."""
    explicit = os.environ.get("NCM_ROOT")
    if explicit:
        return Path(explicit).resolve()
    here = (Path(start) if start is not None else Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "manage.py").is_file() or (folder / "settings" / "settings.toml").is_file():
            return folder
    return here


def as_path(value: PathArg | None) -> Path | None:
    """`value` as a `Path` (None stays None)."""
    return None if value is None else Path(value)


def project_root(root: PathArg | None) -> Path:
    """The project's root: `root` if given, else `find_root()`."""
    return Path(root) if root is not None else find_root()


def load_project(
    root: PathArg | None = None, env: str | None = None, settings_dir: PathArg | None = None
) -> Project:
    """Settings for `env`, every service's revision headers, and the checked graph."""
    return read_project(load_settings(project_root(root), env, as_path(settings_dir)))
