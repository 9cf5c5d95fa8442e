"""Where a monorepo is, and loading it for one environment: its settings (`settings.py`,
the Dynaconf loader), then its revisions and graph (`project.read_project`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

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


class Where(TypedDict, total=False):
    """Where a verb works, given to every public verb as keyword arguments: the monorepo
    (`root`, default `find_root()`), the environment (`env`, default `NCM_ENV`, else
    development) and the settings folder (`settings_dir`, default `<root>/settings`)."""

    root: PathArg | None
    env: str | None
    settings_dir: PathArg | None


@dataclass(frozen=True)
class Location:
    """A verb's `Where`, resolved: the root found, paths as `Path`s."""

    root: Path
    env: str | None
    settings_dir: Path | None

    @classmethod
    def of(cls, where: Where, verb: str) -> Location:
        """`where` resolved; a keyword that is not one of `Where`'s is the `TypeError`
        Python gives for an unknown keyword argument (a `**where` would accept it)."""
        unknown = sorted(set(where) - Where.__optional_keys__)
        if unknown:
            raise TypeError(f"{verb}() got an unexpected keyword argument '{unknown[0]}'")
        return cls(project_root(where.get("root")), where.get("env"),
                   as_path(where.get("settings_dir")))


def load_project(
    root: PathArg | None = None, env: str | None = None, settings_dir: PathArg | None = None
) -> Project:
    """Settings for `env`, every service's revision headers, and the checked graph."""
    return read_project(load_settings(project_root(root), env, as_path(settings_dir)))


def load_project_at(where: Location) -> Project:
    """`load_project` for a resolved `Location`."""
    return read_project(load_settings(where.root, where.env, where.settings_dir))
