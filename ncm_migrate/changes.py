"""Which services a change touches: the files git says changed since a commit, mapped to
the services that hold them, plus the services that depend on those (`--changed-since`).

A change outside every service that can change how all of them are checked (the project's
settings, ncm-migrate's own version in pyproject.toml or a lock file) selects them all.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import Settings
from .errors import BadInput
from .graph import Graph

log = logging.getLogger(__name__)

# Files outside the services that pin ncm-migrate's version (or the project's tools): a
# change to one may change every check's outcome.
_VERSION_FILES = frozenset({
    "pyproject.toml", "setup.cfg", "setup.py", "uv.lock", "poetry.lock", "pdm.lock",
    "Pipfile", "Pipfile.lock", "manage.py",
})
_GIT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Selection:
    """The services a change selects, and why: `everything` names the file that selects
    every service (None when only some are)."""

    services: tuple[str, ...]
    everything: str | None = None
    changed: tuple[str, ...] = ()  # services holding a changed file, before their dependents


def changed_files(root: Path, ref: str) -> list[Path]:
    """Files that differ from the merge base of `ref` and HEAD: committed since, staged,
    not staged, and new files git does not ignore (a revision not added yet still counts).

    `BadInput` (exit 2) when git is missing, `root` is not in a git repository, or `ref`
    names no commit."""
    top = Path(_git(root, "rev-parse", "--show-toplevel",
                    fail=f"--changed-since needs a git repository; {root} is not inside one").strip())
    if not ref or ref.startswith("-"):
        raise BadInput(f"--changed-since needs a commit, branch or tag, not '{ref}'.")
    _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}",
         fail=f"--changed-since {ref}: git knows no such commit, branch or tag (in CI, fetch it "
              "first: a shallow clone lacks it; actions/checkout needs fetch-depth: 0)")
    diff = _git(root, "diff", "--name-only", "-z", "--no-renames", "--merge-base", ref,
                fail=f"--changed-since {ref}: it shares no history with HEAD")
    new = _git(root, "ls-files", "-z", "--others", "--exclude-standard", "--full-name",
               fail="git could not list the files it does not track")
    names = [n for n in (diff + new).split("\0") if n]
    return [top / n for n in dict.fromkeys(names)]


def _git(root: Path, *args: str, fail: str) -> str:
    try:
        proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              timeout=_GIT_TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise BadInput("--changed-since needs git, which is not installed (not on PATH).") from None
    except (OSError, subprocess.SubprocessError) as exc:
        raise BadInput(f"{fail}: {exc}.") from None
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()
        raise BadInput(f"{fail}." + (f" (git: {detail[-1]})" if detail else ""))
    return proc.stdout


def select_changed(settings: Settings, graph: Graph, files: Iterable[Path],
                   settings_dir: Path) -> Selection:
    """The services `files` touch (their revisions, models or own settings), plus every
    service that depends on one of them (`depends_on` or a revision's `requires`); every
    service when a file is the project's settings or pins ncm-migrate's version."""
    every = tuple(s.name for s in settings.services)
    touched: list[str] = []
    for path in files:
        owner = service_of(settings, path)
        if owner is not None:
            touched.append(owner)
        elif _selects_everything(settings, path, settings_dir):
            return Selection(every, everything=_shown(path, settings.root), changed=every)
    changed = tuple(dict.fromkeys(touched))
    reach = dependents(settings, graph, changed)
    return Selection(tuple(n for n in every if n in reach), changed=changed)


def service_of(settings: Settings, path: Path) -> str | None:
    """The service whose folder holds `path` (its revisions, models and own settings all
    live there), or None."""
    path = _absolute(path, settings.root)
    for svc in settings.services:
        if path.is_relative_to(svc.root.resolve()):
            return svc.name
    return None


def dependents(settings: Settings, graph: Graph, names: Sequence[str]) -> set[str]:
    """`names` and every service that depends on one of them, directly or not."""
    needed_by: dict[str, set[str]] = {}
    for svc in settings.services:
        for dep in svc.depends_on:
            needed_by.setdefault(dep, set()).add(svc.name)
    for key, needs in graph.required_parents.items():
        for need in needs:
            if need.service != key.service:
                needed_by.setdefault(need.service, set()).add(key.service)
    reach, todo = set(names), list(names)
    while todo:
        for other in needed_by.get(todo.pop(), ()):
            if other not in reach:
                reach.add(other)
                todo.append(other)
    return reach


def services_of_paths(
    settings: Settings, paths: Sequence[str], settings_dir: Path
) -> tuple[str, ...] | None:
    """For file arguments (pre-commit passes the changed files), relative to the current
    folder: the services holding them, in settings order; None (every service) when one is
    a project-wide file."""
    owners: set[str] = set()
    for name in paths:
        path = Path(name).absolute()
        if not path.exists():
            raise BadInput(f"No such file: {name} (a file argument must be a file of the "
                           "project; a service is named without a slash).")
        owner = service_of(settings, path)
        if owner is not None:
            owners.add(owner)
        elif _selects_everything(settings, path, settings_dir):
            return None
    return tuple(s.name for s in settings.services if s.name in owners)


def looks_like_path(arg: str) -> bool:
    """A command-line argument that names a file rather than a service."""
    return "/" in arg or "\\" in arg or arg.endswith((".py", ".toml"))


def _selects_everything(settings: Settings, path: Path, settings_dir: Path) -> bool:
    path = _absolute(path, settings.root)
    if path.is_relative_to(settings_dir.resolve()):
        return True
    return path.name in _VERSION_FILES or (path.name.startswith("requirements") and path.suffix in (
        ".txt", ".in"))


def _absolute(path: Path, root: Path) -> Path:
    return (path if path.is_absolute() else root / path).resolve()


def _shown(path: Path, root: Path) -> str:
    try:
        return str(_absolute(path, root).relative_to(root.resolve()))
    except ValueError:
        return str(path)
