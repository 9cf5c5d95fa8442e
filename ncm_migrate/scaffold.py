"""Scaffolding: `init` lays out a monorepo (as `django-admin startproject` does), and
`startservice` adds a service to one. Neither overwrites anything."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from .discovery import SERVICE_NAME
from .errors import BadInput
from .model import BackendName
from .settings import load_settings, settings_dir_of
from .templates import render_scaffold
from .urls import backend_of, check_url, mask_url, password_of

log = logging.getLogger(__name__)
GITIGNORE_ENTRIES = (
    ("# ncm-migrate: local SQLite databases, backups and the audit log", ("var/",)),
    (
        "# ncm-migrate: secrets and a developer's own settings",
        ("settings/.secrets.toml", "settings/settings.local.toml"),
    ),
)


@dataclass(frozen=True)
class NewService:
    """What `startservice` created, and where the new service's database comes from."""

    name: str
    env: str
    paths: tuple[Path, ...]
    settings_file: Path
    written_url: str | None  # the URL written into `settings_file` (never one with a password)
    url: str | None  # the (masked) URL the settings now give it in `env`; None: it has none


def init_project(directory: Path) -> list[Path]:
    """Write `manage.py`, `settings/settings.toml` and `services/` into `directory`, and
    git-ignore secrets and local databases; the paths created or changed.

    Raises `BadInput` (exit 2), writing nothing, when any of those files already exists.
    """
    directory = directory.resolve()
    if directory.exists() and not directory.is_dir():
        raise BadInput(f"{directory} exists and is not a folder.")
    manage = directory / "manage.py"
    settings = directory / "settings" / "settings.toml"
    existing = [p for p in (manage, settings) if p.exists()]
    if existing:
        raise BadInput(
            f"Refusing to overwrite {', '.join(str(p) for p in existing)}: "
            f"{directory} already looks like an ncm-migrate monorepo."
        )
    written: list[Path] = []
    try:
        settings.parent.mkdir(parents=True, exist_ok=True)
        manage.write_text(render_scaffold("manage.py"), encoding="utf-8")
        manage.chmod(0o755)
        settings.write_text(render_scaffold("settings.toml"), encoding="utf-8")
        written += [manage, settings]
        services = directory / "services"
        if not services.exists():
            services.mkdir()
            (services / ".gitkeep").touch()
            written.append(services)
        gitignore = directory / ".gitignore"
        if _add_gitignore_entries(gitignore):
            written.append(gitignore)
    except OSError as exc:
        done = f" (written so far: {', '.join(str(p) for p in written)})" if written else ""
        raise BadInput(
            f"Cannot write into {directory}: {exc.strerror or exc}; make it writable{done}."
        ) from None
    return written


def start_service(
    root: Path,
    name: str,
    backend: str | None = None,
    database_url: str | None = None,
    env: str | None = None,
    settings_dir: Path | None = None,
) -> NewService:
    """Create `services/<name>/` with `migrations/`, a `models.py` (SQL) and a
    `settings.toml` giving it a database in `env`.

    Without `database_url`, and when the settings give the service none, an SQL service's
    database is an SQLite file under `var/<env>/` (no server needed); a MongoDB or Redis
    service gets no URL (there is no server to assume) and is left out until one is set.
    Raises `BadInput` (exit 2) for a bad name, backend or URL, a URL holding a password, or
    a service folder that already exists.
    """
    if not SERVICE_NAME.match(name):
        raise BadInput(f"Service name '{name}' is invalid: use lower-case letters, digits and _ "
                       "([a-z][a-z0-9_]*), starting with a letter, at most 47 characters.")
    if backend not in (None, "sql", "mongo", "redis"):
        raise BadInput(f"Unknown backend '{backend}'; use sql, mongo or redis.")
    if database_url is not None:
        problem = check_url(database_url)
        if problem:
            raise BadInput(f"--database-url is not a valid database URL: {problem}.")
        if password_of(database_url):
            raise BadInput(
                f"--database-url holds a password, which must not be written to "
                f"services/{name}/settings.toml; put it in settings/.secrets.toml or "
                f"NCM_SERVICES__{name.upper()}__DATABASE_URL instead."
            )
        inferred = backend_of(database_url)
        if backend is not None and backend != inferred:
            raise BadInput(f"--backend {backend} does not match --database-url, a {inferred} URL.")
        backend = inferred
    kind: BackendName = "mongo" if backend == "mongo" else "redis" if backend == "redis" else "sql"
    settings = load_settings(root, env, settings_dir)
    folder = settings.services_dir / name
    if folder.exists():
        raise BadInput(f"Refusing to overwrite {folder}: service '{name}' already exists.")
    migrations = folder / "migrations"
    service_settings = folder / "settings.toml"
    written = [folder, migrations]
    try:
        migrations.mkdir(parents=True)
        (migrations / ".gitkeep").touch()
        if kind == "sql":
            (folder / "models.py").write_text(render_scaffold("models.py", name=name), encoding="utf-8")
            written.append(folder / "models.py")
        configured = load_settings(root, env, settings_dir).service(name)
        url = database_url
        if url is None and configured.database_url is None and kind == "sql":
            url = f"sqlite:///var/{settings.env}/{name}.db"
        service_settings.write_text(
            render_scaffold("service_settings.toml", name=name, env=settings.env, database_url=url,
                            backend=kind),
            encoding="utf-8",
        )
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)  # it did not exist: all of it is ours
        raise BadInput(
            f"Cannot create service '{name}' in {settings.services_dir}: "
            f"{exc.strerror or exc}; make that folder writable (nothing was created)."
        ) from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    written.append(service_settings)
    final = load_settings(root, env, settings_dir).service(name)
    log.info("created service '%s' in %s (settings: %s)", name, folder,
             settings_dir_of(root, settings_dir))
    return NewService(name, settings.env, tuple(written), service_settings, url,
                      mask_url(final.database_url) if final.database_url else None)


def _add_gitignore_entries(path: Path) -> bool:
    """Append the entries `.gitignore` lacks; True when it changed."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    present = {line.strip() for line in text.splitlines()}
    lines: list[str] = []
    for comment, entries in GITIGNORE_ENTRIES:
        missing = [e for e in entries if e not in present]
        if missing:
            lines += [comment, *missing]
    if not lines:
        return False
    prefix = "" if not text or text.endswith("\n") else "\n"
    path.write_text(text + prefix + "\n".join(lines) + "\n", encoding="utf-8")
    return True
