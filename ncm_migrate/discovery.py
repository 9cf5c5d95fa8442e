"""Finding services on disk and reading revision headers without importing them.

No settings, no database. Headers are read with `ast`, so a revision whose imports are
broken still lists and plans; only a header value that is not a literal (computed at
import, as Alembic allows) makes that one file be imported to read it. A `HeaderCache`
keeps parsed headers keyed on each file's content hash, so a file is parsed (or imported)
again only when its bytes change.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeGuard

from .config import DURATION_HINT, duration_ms
from .errors import Interrupted, RevisionFileError
from .header_checks import deploy_header
from .model import MIGRATION_TYPES, PHASES, Revision, split_reference
from .pyfiles import import_file, one_line

# At most 47 characters: `alembic_version_<svc>` (the version table of services sharing a
# database) fits PostgreSQL's and MySQL's 63 characters, and the ledger's service column.
SERVICE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,46}$")
# A revision id (and a branch label, and what a header names): it reaches SQL text (Alembic
# writes version rows as literals) and Alembic's version_num column holds 32 characters.
REVISION_ID = re.compile(r"[A-Za-z0-9_]{1,32}")
MAX_REVISION_LENGTH = 32
# Words that name a position, not a revision, in a target (`migrate SVC head`).
RESERVED_IDS = frozenset({"head", "heads", "base", "current"})
_HEADER_KEYS = (
    "revision",
    "down_revision",
    "branch_labels",
    "depends_on",
    "requires",
    "migration_type",
    "lock_timeout",
    "statement_timeout",
    "phase",
    "window",
)
_SKIPPED_FILES = {"env.py", "__init__.py", "conftest.py"}
log = logging.getLogger(__name__)


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
                "must match [a-z][a-z0-9_]*, at most 47 characters (rename the folder)."
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
    return [folder / name for name in _revision_names(folder)]


def _revision_names(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    # os.scandir: the directory entries say which are files, without a stat per file.
    with os.scandir(folder) as entries:
        return sorted(
            e.name
            for e in entries
            if e.name.endswith(".py") and e.name not in _SKIPPED_FILES and e.is_file()
        )


def checksum_text(text: str) -> str:
    """A checksum that ignores line endings and trailing whitespace."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def read_revisions(
    service: str, migrations_dir: Path, cache: HeaderCache | None = None
) -> list[Revision]:
    """Every revision header of one service, sorted by revision id.

    With a `cache`, a file whose bytes hash to what the cache holds for its path is not
    parsed again. Raises `RevisionFileError` for a syntax error (with file and line), a
    missing `revision`, a value of the wrong type, or two files with the same revision id.
    """
    revisions: dict[str, Revision] = {}
    folder = versions_dir(migrations_dir)
    where = str(folder)
    for name in _revision_names(folder):
        path = folder / name
        if cache is None:
            rev = read_revision(service, path)
        else:
            data = _read_bytes(os.path.join(where, name))
            digest = hashlib.sha256(data).hexdigest()
            cached = cache.get(service, where, name, path, digest)
            if cached is None:
                rev = parse_revision(service, path, _decode(data, path, service))
                cache.put(where, name, rev, digest)
            else:
                rev = cached
        if rev.revision in revisions:
            raise RevisionFileError(
                f"Duplicate revision id '{rev.revision}' in service '{service}': "
                f"{revisions[rev.revision].path} and {path}; give one of them a new id."
            )
        revisions[rev.revision] = rev
    return [revisions[r] for r in sorted(revisions)]


def read_revision(service: str, path: Path) -> Revision:
    """Read one revision file's header without importing it."""
    return parse_revision(service, path, _decode(path.read_bytes(), path, service))


def _read_bytes(path: str) -> bytes:
    """A file's bytes by plain system calls: pathlib's and io's layers cost more than the
    read itself, thousands of times over."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = [os.read(fd, 1 << 16)]
        while len(chunks[-1]) == 1 << 16:
            chunks.append(os.read(fd, 1 << 16))
    finally:
        os.close(fd)
    return b"".join(chunks) if len(chunks) > 1 else chunks[0]


def _decode(data: bytes, path: Path, service: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RevisionFileError(
            f"{path}: a revision file of service '{service}' is not UTF-8 text ({exc.reason} "
            f"at byte {exc.start}); save it as UTF-8."
        ) from None


def parse_revision(service: str, path: Path, text: str) -> Revision:
    """One revision header from the file's text (`path` names it in errors and in the result).

    A header value that is not a literal is read by importing the file (see
    `_imported_header`). Every revision id the header gives or names is checked with
    `check_name`: nothing else reaches a database.
    """
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as exc:
        raise RevisionFileError(
            f"{path}:{exc.lineno}: syntax error in a revision of service '{service}': {exc.msg}."
        ) from None
    values: dict[str, object] = {}
    lines: dict[str, int] = {}
    computed: list[str] = []
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
                if target in computed:
                    computed.remove(target)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                computed.append(target)
            lines[target] = node.lineno
    if computed:
        values.update(_imported_header(service, path, computed))
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
    phase, window = deploy_header(values, lines, path)
    header = {key: _strings(values.get(key), key, path) for key in _NAME_KEYS}
    timeouts = {key: _timeout(values.get(key), f"{path}:{lines.get(key, 1)}", key)
                for key in ("lock_timeout", "statement_timeout")}
    where = f"{path}:{lines.get('revision', 1)}"
    check_name(revision, f"{where}: the revision id of this file of service '{service}'")
    for key, names in header.items():
        for name in names:
            if key in ("depends_on", "requires"):
                svc, name = split_reference(name)
                if key == "requires" and not (svc and name):
                    continue  # the graph says how to write it: service:revision
            check_name(name, f"{path}:{lines.get(key, 1)}: {key} in service '{service}'")
    return Revision(
        service=service,
        revision=revision,
        down_revisions=header["down_revision"],
        path=path,
        checksum=checksum_text(text),
        branch_labels=header["branch_labels"],
        depends_on=header["depends_on"],
        requires=header["requires"],
        migration_type=str(migration_type),
        lock_timeout=timeouts["lock_timeout"],
        statement_timeout=timeouts["statement_timeout"],
        doc=_first_line(ast.get_docstring(tree)),
        defines=frozenset(defines),
        line_of=tuple(sorted(lines.items())),
        phase=phase,
        window=window,
    )


_NAME_KEYS = ("down_revision", "branch_labels", "depends_on", "requires")


def _timeout(value: object, where: str, key: str) -> str | None:
    """A `lock_timeout` / `statement_timeout` header as written (None: not given), checked."""
    if value is None:
        return None
    if duration_ms(value) is None:
        raise RevisionFileError(f"{where}: {key} must be {DURATION_HINT}, not {value!r}.")
    return str(value)


def check_name(name: str, what: str) -> None:
    """Raise `RevisionFileError` (exit 2) unless `name` can be a revision id or branch label
    (or a reference to one): `[A-Za-z0-9_]{1,32}` and not a reserved word. `what` says
    where it is, for the message."""
    if REVISION_ID.fullmatch(name) and name not in RESERVED_IDS:
        return
    why = (
        f"'{name}' is a reserved word (head, heads, base, current)"
        if REVISION_ID.fullmatch(name)
        else f"{name!r} is not 1 to {MAX_REVISION_LENGTH} of the characters A-Z a-z 0-9 _"
    )
    raise RevisionFileError(f"{what}: {why}; rename it.")


def _imported_header(service: str, path: Path, keys: Sequence[str]) -> dict[str, object]:
    """The header values `keys` (not literals) as the module has them once imported, as
    Alembic reads every header. Only this file's top-level code runs; whatever it raises,
    `SystemExit` included, is a `RevisionFileError` naming the file."""
    said = f"{', '.join(keys)} {'is' if len(keys) == 1 else 'are'} not a literal"
    log.info("reading %s's header by importing it: %s", path, said)
    name = f"ncm_header_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    try:
        module = import_file(path, name)
    except Interrupted:
        raise
    except BaseException as exc:  # user code: SystemExit and KeyboardInterrupt too
        raise RevisionFileError(
            f"{path}: the header of this revision of service '{service}' is read by importing "
            f"it ({said}), and importing it failed: {one_line(exc)}."
        ) from None
    finally:
        sys.modules.pop(name, None)
    return {key: getattr(module, key, None) for key in keys}


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
    if value is None or value == "":  # "" means none, as in Alembic
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Iterable) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise RevisionFileError(
        f"{path}: '{key}' must be a string, None, or a tuple of strings, not {value!r}."
    )


class HeaderCache:
    """Parsed revision headers, each stored with the SHA-256 of the file it came from.

    A header is served only for the same path and the same bytes, so an edited file is
    always parsed again; entries from other versions of this module (whose parsing may
    differ) are never served. Kept as JSON (no code runs on load): one JSON text per
    folder, decoded when that folder is first read (so a large cache costs little memory
    and time for the folders a command does not read). A cache file that cannot be read or
    written is ignored: it only saves time.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._texts: dict[str, str] = {}  # folder -> JSON of {file name: row}, as loaded
        self._rows: dict[str, dict[str, Any]] = {}  # folder -> rows, once decoded
        self._seen: dict[str, set[str]] = {}
        self._changed: set[str] = set()
        if path is not None:
            self._texts = _load_folders(path)

    def _folder(self, folder: str) -> dict[str, Any]:
        rows = self._rows.get(folder)
        if rows is None:
            try:
                rows = json.loads(self._texts.pop(folder, "{}"))
            except ValueError:
                rows = None
            if not isinstance(rows, dict):
                rows = {}
            self._rows[folder] = rows
        return rows

    def get(self, service: str, folder: str, name: str, path: Path, digest: str) -> Revision | None:
        """The header of `folder`/`name` (`path`) if the cache holds it for these bytes."""
        self._seen.setdefault(folder, set()).add(name)
        row = self._folder(folder).get(name)
        if not _well_formed(row) or row[0] != digest:
            return None
        try:
            return _revision_from(row, service, path)
        except (TypeError, ValueError):
            return None

    def put(self, folder: str, name: str, rev: Revision, digest: str) -> None:
        self._seen.setdefault(folder, set()).add(name)
        self._folder(folder)[name] = _row_of(rev, digest)
        self._changed.add(folder)

    def save(self, folders: Iterable[Path] = ()) -> None:
        """Write the cache if anything changed, dropping rows for files that are gone from
        `folders` (the migrations folders read this time)."""
        if self.path is None:
            return
        for folder in {str(versions_dir(f)) for f in folders}:
            rows = self._folder(folder)
            seen = self._seen.get(folder, set())
            if rows.keys() - seen:
                self._rows[folder] = {k: v for k, v in rows.items() if k in seen}
                self._changed.add(folder)
        if not self._changed:
            return
        import tempfile  # only when writing: it costs every command start-up otherwise

        texts = dict(self._texts)  # folders not decoded this time, unchanged
        for folder, rows in self._rows.items():
            if rows:
                texts[folder] = json.dumps(rows, separators=(",", ":"))
        payload = json.dumps({"format": _cache_format(), "folders": texts}, separators=(",", ":"))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".ncm-headers.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(payload)
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            log.debug("header cache %s not written: %s", self.path, exc)
            return
        self._changed.clear()


_FORMAT: str | None = None


def _cache_format() -> str:
    """A tag that changes whenever the code that parses headers changes."""
    global _FORMAT
    if _FORMAT is None:
        digest = hashlib.sha256(sys.version.encode())
        for module in (Path(__file__), Path(__file__).with_name("model.py"),
                       Path(__file__).with_name("header_checks.py")):
            digest.update(module.read_bytes())
        _FORMAT = digest.hexdigest()
    return _FORMAT


def _load_folders(path: Path) -> dict[str, str]:
    """The cache's folders (each a JSON text of its rows by file name)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        if not isinstance(exc, FileNotFoundError):
            log.debug("header cache %s ignored: %s", path, exc)
        return {}
    if not isinstance(data, dict) or data.get("format") != _cache_format():
        return {}
    folders = data.get("folders")
    if not isinstance(folders, dict):
        return {}
    return {folder: text for folder, text in folders.items() if isinstance(text, str)}


# A row: sha256, revision, down_revisions, checksum, branch_labels, depends_on, requires,
# migration_type, doc, defines, line_of (flat: name, line, name, line, ...), lock_timeout,
# statement_timeout, phase, window.
def _well_formed(row: object) -> TypeGuard[list[Any]]:
    """The row has the shape this module writes (rows are only ever written by `put`, and
    served only for the bytes and the code version they were written for: this guards
    against a damaged file, cheaply, as it runs for every revision of every listing)."""
    return (
        type(row) is list
        and len(row) == 15
        and type(row[0]) is str
        and type(row[1]) is str
        and type(row[2]) is list
        and type(row[3]) is str
        and type(row[4]) is list
        and type(row[5]) is list
        and type(row[6]) is list
        and type(row[7]) is str
        and type(row[8]) is str
        and type(row[9]) is list
        and type(row[10]) is list
        and (row[11] is None or type(row[11]) is str)
        and (row[12] is None or type(row[12]) is str)
        and row[13] in PHASES
        and row[14] in (None, True, False)
    )


def _row_of(rev: Revision, digest: str) -> list[Any]:
    return [
        digest, rev.revision, list(rev.down_revisions), rev.checksum, list(rev.branch_labels),
        list(rev.depends_on), list(rev.requires), rev.migration_type, rev.doc,
        sorted(rev.defines), [x for pair in rev.line_of for x in pair], rev.lock_timeout,
        rev.statement_timeout, rev.phase, rev.window,
    ]


def _revision_from(row: list[Any], service: str, path: Path) -> Revision:
    return Revision(
        service=service,
        revision=row[1],
        down_revisions=tuple(row[2]),
        path=path,
        checksum=row[3],
        branch_labels=tuple(row[4]),
        depends_on=tuple(row[5]),
        requires=tuple(row[6]),
        migration_type=row[7],
        doc=row[8],
        defines=frozenset(row[9]),
        line_of=tuple(zip(row[10][::2], row[10][1::2], strict=True)),
        lock_timeout=row[11],
        statement_timeout=row[12],
        phase=row[13],
        window=row[14],
    )
