"""Finding services on disk and reading revision headers without importing them.

Disk only: no settings, no database. Headers are read with `ast`, so a revision whose
imports are broken still lists and plans; only applying or rendering imports it.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

from .errors import RevisionFileError
from .model import MIGRATION_TYPES, Revision

SERVICE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_HEADER_KEYS = (
    "revision",
    "down_revision",
    "branch_labels",
    "depends_on",
    "requires",
    "migration_type",
)
_SKIPPED_FILES = {"env.py", "__init__.py", "conftest.py"}


def find_service_dirs(root: Path, services_dir: str, services_glob: str) -> list[Path]:
    """Folders under `root/services_dir` matching `services_glob` that hold `migrations/`.

    Raises `RevisionFileError` (exit 2) for a service folder whose name is not a valid
    service name, or for two folders with the same name in a nested layout.
    """
    base = (root / services_dir).resolve()
    if not base.is_dir():
        return []
    found: dict[str, Path] = {}
    for candidate in sorted(base.glob(services_glob)):
        if not (candidate / "migrations").is_dir():
            continue
        name = candidate.name
        if not SERVICE_NAME.match(name):
            raise RevisionFileError(
                f"Service folder {candidate} has an invalid name '{name}': service names "
                "must match [a-z][a-z0-9_]* (rename the folder)."
            )
        if name in found:
            raise RevisionFileError(
                f"Two service folders are both named '{name}': {found[name]} and {candidate}; "
                "service names must be unique across the monorepo."
            )
        found[name] = candidate
    return [found[name] for name in sorted(found)]


def versions_dir(migrations_dir: Path) -> Path:
    """Where the revision files are: `migrations/versions/` in a classic Alembic layout,
    else `migrations/` itself."""
    nested = migrations_dir / "versions"
    return nested if nested.is_dir() else migrations_dir


def revision_files(migrations_dir: Path) -> list[Path]:
    folder = versions_dir(migrations_dir)
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix == ".py" and p.is_file() and p.name not in _SKIPPED_FILES
    )


def checksum_text(text: str) -> str:
    """A checksum that ignores line endings and trailing whitespace."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def read_revisions(service: str, migrations_dir: Path) -> list[Revision]:
    """Every revision header of one service, sorted by revision id.

    Raises `RevisionFileError` for a syntax error (with file and line), a missing
    `revision`, a value of the wrong type, or two files with the same revision id.
    """
    revisions: dict[str, Revision] = {}
    for path in revision_files(migrations_dir):
        rev = read_revision(service, path)
        if rev.revision in revisions:
            raise RevisionFileError(
                f"Duplicate revision id '{rev.revision}' in service '{service}': "
                f"{revisions[rev.revision].path} and {path}; give one of them a new id."
            )
        revisions[rev.revision] = rev
    return [revisions[r] for r in sorted(revisions)]


def read_revision(service: str, path: Path) -> Revision:
    """Read one revision file's header without importing it."""
    text = path.read_text(encoding="utf-8")
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as exc:
        raise RevisionFileError(
            f"{path}:{exc.lineno}: syntax error in a revision of service '{service}': {exc.msg}."
        ) from None
    values: dict[str, object] = {}
    lines: dict[str, int] = {}
    defines: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            defines.add(node.name)
            lines[node.name] = node.lineno
            continue
        target, value = _assignment(node)
        if target in _HEADER_KEYS and value is not None:
            try:
                values[target] = ast.literal_eval(value)
            except ValueError:
                raise RevisionFileError(
                    f"{path}:{node.lineno}: '{target}' must be a literal "
                    f"(a string, None, or a tuple of strings) in service '{service}'."
                ) from None
            lines[target] = node.lineno
    revision = values.get("revision")
    if not isinstance(revision, str) or not revision:
        raise RevisionFileError(
            f"{path}: no `revision = \"...\"` header in this file of service '{service}'; "
            "every revision file needs one."
        )
    migration_type = values.get("migration_type", "schema")
    if migration_type not in MIGRATION_TYPES:
        raise RevisionFileError(
            f"{path}:{lines.get('migration_type', 1)}: migration_type must be one of "
            f"{', '.join(MIGRATION_TYPES)}, not {migration_type!r}."
        )
    return Revision(
        service=service,
        revision=revision,
        down_revisions=_strings(values.get("down_revision"), "down_revision", path),
        path=path,
        checksum=checksum_text(text),
        branch_labels=_strings(values.get("branch_labels"), "branch_labels", path),
        depends_on=_strings(values.get("depends_on"), "depends_on", path),
        requires=_strings(values.get("requires"), "requires", path),
        migration_type=str(migration_type),
        doc=_first_line(ast.get_docstring(tree)),
        defines=frozenset(defines),
        line_of=tuple(sorted(lines.items())),
    )


def _first_line(docstring: str | None) -> str:
    lines = (docstring or "").strip().splitlines()
    return lines[0] if lines else ""


def _assignment(node: ast.stmt) -> tuple[str | None, ast.expr | None]:
    if (
        isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)
    ):
        return node.targets[0].id, node.value
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id, node.value
    return None, None


def _strings(value: object, key: str, path: Path) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Iterable) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise RevisionFileError(
        f"{path}: '{key}' must be a string, None, or a tuple of strings, not {value!r}."
    )
