"""Layered settings for one environment, validated into typed values.

The only module that imports Dynaconf. Layers, lowest first: the package's defaults,
`settings/settings.toml`, `settings/.secrets.toml`, `settings/settings.local.toml`, each
service's own `services/<svc>/settings.toml`, then `NCM_` environment variables.
Command-line flags are applied by the caller on top.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from dynaconf import Dynaconf
from dynaconf.utils.inspect import get_history

from .config import BackupSettings, ConnectSettings, LockSettings, Settings
from .discovery import find_service_dirs
from .environments import (
    DEFAULT_ENV,
    check_environment_name,
    closest_environment,
    section_warnings,
)
from .errors import SettingsError, UnknownEnvironment
from .ledger import ACTOR_LENGTH
from .model import ServiceConfig
from .rules import version_table_findings
from .urls import (
    backend_of,
    check_url,
    mask_userinfo,
    password_of,
    remember_secret,
    resolve_sqlite_path,
)

log = logging.getLogger(__name__)
PROJECT_FILES = ("settings.toml", ".secrets.toml", "settings.local.toml")
# The settings files that are committed (settings/settings.toml, services/<svc>/settings.toml;
# .secrets.toml and settings.local.toml are git-ignored): none may hold a secret.
COMMITTED_FILE = "settings.toml"
SECRET_KEYS = {("backup", "encryption_key"), ("notify", "webhook_url")}
# Dynaconf's template expressions, which read a value (a password, say) at load time.
_TEMPLATE = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{[^{}]*\}")
_warned: set[tuple[Path, str]] = set()
_DEFAULTS = Path(__file__).with_name("defaults.toml")
# NCM_* variables that are not settings: the environment, the actor, the project root, and
# the Docker entrypoint's app folder.
NOT_SETTINGS = {"NCM_ENV", "NCM_ACTOR", "NCM_ROOT", "NCM_APP_DIR"}
_NOT_ENVIRONMENTS = {"default", "global", "dynaconf_merge", "dynaconf_include"}

_TOP_KEYS = {
    "services_dir", "services_glob", "database_url", "services", "connect", "lock",
    "protected", "backup", "lint", "audit", "jobs", "rollback_on_failure",
    "allow_checksum_drift",
}
_SERVICE_KEYS = {
    "database_url", "backend", "version_table", "depends_on", "naming_convention", "models",
    "revision_ids", "use_env_py", "enabled", "database",
}
_TABLE_KEYS = {
    "connect": {"retries", "max_wait_s", "timeout_s", "read_timeout_s", "keepalive_s"},
    "lock": {"timeout_s", "lease_s"},
    "backup": {"before_migrate", "dir", "encryption_key"},
    "lint": {"severity", "squawk"},
    "audit": {"log_path"},
}


def settings_dir_of(root: Path, settings_dir: Path | None = None) -> Path:
    return (settings_dir or root / "settings").resolve()


def read_settings_files(
    settings_dir: Path, service_dirs: Iterable[Path] = ()
) -> dict[Path, dict[str, Any]]:
    """Every settings file present, as TOML, each checked: no setting outside an environment
    section, and no secret in a committed file."""
    found = {}
    paths = [settings_dir / name for name in PROJECT_FILES]
    paths += [d / COMMITTED_FILE for d in service_dirs]
    for path in paths:
        if path.is_file():
            sections = _read_toml(path)
            service = None if path.parent == settings_dir else path.parent.name
            _check_sections(path, sections, service_file=service is not None)
            if path.name == COMMITTED_FILE:
                _check_no_secrets(path, sections, service, settings_dir)
            found[path] = sections
    return found


def known_environments(files: Mapping[Path, Mapping[str, Any]]) -> list[str]:
    """The environment sections named in any of `files`, plus `development`."""
    names = {DEFAULT_ENV}
    for sections in files.values():
        names.update(k.lower() for k in sections if k.lower() not in _NOT_ENVIRONMENTS)
    return sorted(names)


def chosen_environment(env: str | None, environ: Mapping[str, str]) -> str:
    """`env` (the `--env` flag), else `NCM_ENV`, else `development`; an empty, overlong or
    unsafe name is `SettingsError` naming where it came from."""
    if env is None and "NCM_ENV" not in environ:
        return DEFAULT_ENV
    name, source = (env, "--env") if env is not None else (environ["NCM_ENV"], "NCM_ENV")
    check_environment_name(name, source)
    return name.lower()


def _check_actor(environ: Mapping[str, str]) -> None:
    actor = environ.get("NCM_ACTOR") or ""
    if not actor.isprintable():
        raise SettingsError(
            "NCM_ACTOR holds a control character (a line break, a tab...); the ledger and the "
            "audit log record it as the actor: set a plain name."
        )
    if len(actor) > ACTOR_LENGTH:
        raise SettingsError(
            f"NCM_ACTOR is {len(actor)} characters long; the ledger records at most "
            f"{ACTOR_LENGTH}: set a shorter name."
        )


def _check_no_secrets(
    path: Path, sections: Mapping[str, Any], service: str | None, settings_dir: Path
) -> None:
    """A committed file holding a secret is `SettingsError` naming the key and the file, and
    where to put it instead; the secret itself is never shown."""
    prefix = ("services", service) if service else ()
    for section, table in sections.items():
        for key, value in _leaves(table):
            full = (*prefix, *key)
            what = _secret_kind(full, value)
            if what is None:
                continue
            where = ".".join((section, *full[:-1]))
            raise SettingsError(
                f"Setting '{'.'.join(full)}' in {path} [{section}] {what}, and committed "
                f"settings files must not hold secrets: move it to "
                f"{settings_dir.name}/.secrets.toml (git-ignored) under [{where}], or set "
                f"NCM_{'__'.join(k.upper() for k in full)}."
            )


def _leaves(value: Any, key: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(value, Mapping):
        for sub, item in value.items():
            yield from _leaves(item, (*key, str(sub).lower()))
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item, key)
    else:
        yield key, value


def _secret_kind(key: tuple[str, ...], value: Any) -> str | None:
    """`is a secret` (a key that always holds one), `holds a password` (a URL's), or None."""
    if not isinstance(value, str):
        return None
    text = _literal_text(value)
    if key[-2:] in SECRET_KEYS and text.strip():
        return "is a secret"
    return "holds a password" if password_of(text) else None


def _literal_text(value: str) -> str:
    """A value as written in its file, without Dynaconf's `@jinja`/`@format` expressions
    (which read a secret from elsewhere, at load time) or another `@` token."""
    token, _, rest = value.partition(" ")
    if token in ("@jinja", "@format"):
        return _TEMPLATE.sub("", rest)
    return rest if token.startswith("@") and rest else value


def _own_keys(
    files: Mapping[Path, Mapping[str, Any]], settings_dir: Path, env: str,
    env_layer: Mapping[str, Any],
) -> dict[str, set[str]]:
    """For each environment, the settings its sections hold (a service's own file counts as
    `services`); the `NCM_` variables count for the chosen one."""
    own: dict[str, set[str]] = {DEFAULT_ENV: set()}
    for path, sections in files.items():
        for name, table in sections.items():
            if name.lower() in _NOT_ENVIRONMENTS:
                continue
            keys = own.setdefault(name.lower(), set())
            if path.parent == settings_dir:
                keys.update(str(k).lower() for k in table)
            else:
                keys.add("services")
    own.setdefault(env, set()).update(env_layer)
    return own


def _warn_once(root: Path, messages: list[str]) -> None:
    """Log each warning once per process and project (settings load several times a run)."""
    for message in messages:
        if (root, message) not in _warned:
            _warned.add((root, message))
            log.warning("%s", message)


def _check_sections(path: Path, sections: Mapping[str, Any], service_file: bool) -> None:
    """Every top-level table is an environment ([default], [staging], ...): a setting
    outside one would be ignored without a word, so it is an error."""
    keys = _SERVICE_KEYS if service_file else _TOP_KEYS
    for name, value in sections.items():
        if not isinstance(value, Mapping) or name.lower() in keys:
            where = f"[default.{name}]" if isinstance(value, Mapping) else "[default]"
            raise SettingsError(
                f"Settings file {path}: '{name}' is outside an environment section and would "
                f"be ignored; put it under {where} (every environment) or an environment's "
                "section such as [development]."
            )


def load_settings(
    root: Path,
    env: str | None = None,
    settings_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge every layer for `env` (default: `NCM_ENV`, else `development`) and validate it.

    Raises `UnknownEnvironment` or `SettingsError` (exit 2) naming the key and its source;
    no database is touched.
    """
    environ = os.environ if environ is None else environ
    root = root.resolve()
    sdir = settings_dir_of(root, settings_dir)
    if settings_dir is not None and not sdir.is_dir():
        raise SettingsError(f"The settings folder {sdir} (--settings) does not exist.")
    env = chosen_environment(env, environ)
    _check_actor(environ)
    for name in PROJECT_FILES:
        if (sdir / name).exists() and not (sdir / name).is_file():
            raise SettingsError(f"Settings file {sdir / name} is not a file; make it one, or remove it.")
    files = [str(_DEFAULTS)] + [str(sdir / n) for n in PROJECT_FILES if (sdir / n).is_file()]
    for name in files[1:]:
        # Clear errors naming the file (and line), before Dynaconf's own (a top-level
        # `development = 5` is an AttributeError inside Dynaconf).
        _check_sections(Path(name), _read_toml(Path(name)), service_file=False)
    project = _dynaconf(files, env)
    env_layer = _lower_keys(_env_layer(environ))
    merged = _deep_merge(_lower_keys(project.as_dict()), env_layer)
    sources = _Sources(project, env_layer, {})

    services_dir = _str(merged, "services_dir", sources)
    services_glob = _str(merged, "services_glob", sources)
    service_dirs = find_service_dirs(root, services_dir, services_glob)
    read = read_settings_files(sdir, service_dirs)
    known = known_environments(read)
    if env not in known:
        raise UnknownEnvironment(env, known, closest_environment(env, known))
    _warn_once(root, section_warnings(_own_keys(read, sdir, env, env_layer), env))

    svc_layers: dict[str, dict[str, Any]] = {}
    for folder in service_dirs:
        path = folder / "settings.toml"
        if path.is_file():
            svc_layers[folder.name] = _lower_keys(_dynaconf([str(path)], env).as_dict())
            sources.service_files[folder.name] = path
            sources.service_layers[folder.name] = svc_layers[folder.name]
    files_only = _lower_keys(project.as_dict())
    services_cfg = dict(files_only.get("services") or {})
    for name, layer in svc_layers.items():
        services_cfg[name] = _deep_merge(services_cfg.get(name) or {}, layer)
    files_only["services"] = services_cfg
    merged = _deep_merge(files_only, env_layer)

    _check_keys(merged, sources)
    names = [d.name for d in service_dirs]
    for name in merged.get("services") or {}:
        if name not in names:
            raise SettingsError(
                f"Setting 'services.{name}' ({sources.of(('services', name))}) names a service "
                f"with no folder {services_dir}/{name}/migrations; services found: "
                f"{', '.join(names) or '(none)'}."
            )
    services = tuple(
        _service_config(folder, merged, env, root, sources) for folder in service_dirs
    )
    for svc in services:
        for dep in svc.depends_on:
            if dep not in names:
                raise SettingsError(
                    f"Setting 'services.{svc.name}.depends_on' "
                    f"({sources.of(('services', svc.name, 'depends_on'))}) names unknown "
                    f"service '{dep}'; services found: {', '.join(names)}."
                )
    _check_version_tables(services, root, sources)
    protected = _bool(merged, "protected", sources)
    severity = _get(merged, ("lint", "severity"))
    if severity is None:
        severity = "error" if protected else "warning"
    if severity not in ("warning", "error"):
        raise _bad(("lint", "severity"), severity, "'warning' or 'error'", sources)
    audit = _opt_str(merged, "audit.log_path", sources)
    backup_dir = Path(_str(merged, "backup.dir", sources))
    return Settings(
        root=root,
        env=env,
        services=services,
        connect=ConnectSettings(
            retries=_int(merged, "connect.retries", sources, minimum=0),
            max_wait_s=_float(merged, "connect.max_wait_s", sources),
            timeout_s=_float(merged, "connect.timeout_s", sources),
            read_timeout_s=_float(merged, "connect.read_timeout_s", sources, minimum=0.0),
            keepalive_s=_float(merged, "connect.keepalive_s", sources, minimum=0.0),
        ),
        lock=LockSettings(
            timeout_s=_float(merged, "lock.timeout_s", sources, minimum=0.0),
            lease_s=_float(merged, "lock.lease_s", sources),
        ),
        backup=BackupSettings(
            before_migrate=_bool(merged, "backup.before_migrate", sources),
            dir=backup_dir if backup_dir.is_absolute() else root / backup_dir,
            encryption_key=_opt_str(merged, "backup.encryption_key", sources),
        ),
        protected=protected,
        jobs=_int(merged, "jobs", sources, minimum=1),
        rollback_on_failure=_bool(merged, "rollback_on_failure", sources),
        allow_checksum_drift=_bool(merged, "allow_checksum_drift", sources),
        lint_severity=cast(Literal["warning", "error"], severity),
        lint_squawk=_bool(merged, "lint.squawk", sources),
        audit_log_path=(root / audit) if audit else None,
        known_envs=tuple(known),
        services_dir=root / services_dir,
    )


def _service_config(
    folder: Path, merged: dict[str, Any], env: str, root: Path, sources: _Sources
) -> ServiceConfig:
    name = folder.name
    raw: dict[str, Any] = dict((merged.get("services") or {}).get(name) or {})
    prefix = ("services", name)
    own_url = raw.get("database_url")
    url = own_url if own_url is not None else merged.get("database_url")
    url_key = (*prefix, "database_url") if own_url is not None else ("database_url",)
    enabled = _bool(raw, "enabled", sources, prefix=prefix, default=True)
    backend = raw.get("backend")
    shared_url_of_other_kind = isinstance(url, str) and backend_of(url) != backend
    if own_url is None and backend in ("sql", "mongo") and shared_url_of_other_kind:
        url = None  # the shared database_url is for services of its own kind
    if backend is not None and backend not in ("sql", "mongo"):
        raise _bad((*prefix, "backend"), backend, "'sql' or 'mongo'", sources)
    if url is not None:
        if not isinstance(url, str) or not url.strip():
            raise _bad(url_key, "(hidden)", "a database URL string", sources)
        problem = check_url(url)
        if problem:
            raise SettingsError(
                f"Setting '{'.'.join(url_key)}' ({sources.of(url_key)}) is not a valid "
                f"database URL: {problem}."
            )
        inferred = backend_of(url)
        if backend is not None and backend != inferred:
            raise SettingsError(
                f"Setting 'services.{name}.backend' ({sources.of((*prefix, 'backend'))}) is "
                f"'{backend}' but its database_url is a {inferred} URL."
            )
        backend = inferred
        url = resolve_sqlite_path(url, root)
        remember_secret(url)
    backend = backend or "sql"
    if backend not in ("sql", "mongo"):
        raise _bad((*prefix, "backend"), backend, "'sql' or 'mongo'", sources)
    version_default = "alembic_version" if own_url is not None else f"alembic_version_{name}"
    version_table = raw.get("version_table", version_default)
    if not isinstance(version_table, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", version_table):
        raise _bad((*prefix, "version_table"), version_table,
                   "a table name of at most 63 letters, digits and _ (PostgreSQL's limit)", sources)
    depends_on = raw.get("depends_on", [])
    if isinstance(depends_on, str):
        depends_on = [depends_on]
    if not isinstance(depends_on, list) or not all(isinstance(d, str) for d in depends_on):
        raise _bad((*prefix, "depends_on"), depends_on, "a list of service names", sources)
    convention = raw.get("naming_convention") or {}
    if not isinstance(convention, dict) or not all(isinstance(v, str) for v in convention.values()):
        raise _bad((*prefix, "naming_convention"), convention, "a table of strings", sources)
    revision_ids = raw.get("revision_ids", "numbered")
    if revision_ids not in ("numbered", "hash"):
        raise _bad((*prefix, "revision_ids"), revision_ids, "'numbered' or 'hash'", sources)
    models = raw.get("models")
    if models is not None and (not isinstance(models, str) or ":" not in models):
        raise _bad((*prefix, "models"), models, "'module:attribute'", sources)
    skip = None
    if not enabled:
        skip = f"disabled in environment '{env}' (services.{name}.enabled = false)"
    elif url is None:
        skip = f"no database_url in environment '{env}'"
    return ServiceConfig(
        name=name,
        root=folder,
        backend=cast(Literal["sql", "mongo"], backend),
        database_url=url,
        version_table=version_table,
        depends_on=tuple(depends_on),
        enabled=enabled,
        naming_convention=tuple(sorted((str(k), v) for k, v in convention.items())),
        models=models,
        revision_ids=cast(Literal["numbered", "hash"], revision_ids),
        use_env_py=_bool(raw, "use_env_py", sources, prefix=prefix, default=False),
        database_name=_opt_str(raw, "database", sources, prefix=prefix),
        skip_reason=skip,
    )


def _check_version_tables(services: tuple[ServiceConfig, ...], root: Path, sources: _Sources) -> None:
    """Two services on one database must not share a version table (`rules`' rule)."""
    for finding in version_table_findings(services, root):
        raise SettingsError(
            f"{finding.message} ({sources.of(('services', finding.service))})."
        )


@dataclass
class _Sources:
    """Says where a key's value came from, for error messages."""

    project: Any
    env_layer: dict[str, Any]
    service_files: dict[str, Path]
    service_layers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def of(self, key: tuple[str, ...]) -> str:
        if _get(self.env_layer, key) is not None:
            return "environment variable NCM_" + "__".join(k.upper() for k in key)
        if (
            len(key) >= 3
            and key[0] == "services"
            and _get(self.service_layers.get(key[1], {}), key[2:]) is not None
        ):
            return str(self.service_files[key[1]])
        try:
            history = get_history(self.project, key=".".join(key))
        except (KeyError, AttributeError, TypeError):
            history = []
        for entry in reversed(history):
            ident = str(entry.get("identifier", ""))
            if ident and ident != str(_DEFAULTS):
                return f"{ident} [{entry.get('env', 'default')}]"
        return "built-in default"


def _dynaconf(files: list[str], env: str) -> Any:
    return Dynaconf(
        settings_files=files,
        environments=True,
        env=env,
        merge_enabled=True,
        loaders=[],
    )


def _env_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    """`NCM_*` variables as a nested table, values parsed as TOML where they can be."""
    from dynaconf.utils.parse_conf import parse_conf_data

    out: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith("NCM_") or name in NOT_SETTINGS:
            continue
        if name.startswith("NCM_TEST_"):
            continue
        path = name[4:].lower().split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[path[-1]] = parse_conf_data(value, tomlfy=True, box_settings={})
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"Settings file {path} is not valid TOML: {exc}.") from None
    except UnicodeDecodeError as exc:
        raise SettingsError(
            f"Settings file {path} is not valid TOML: it is not UTF-8 text (byte {exc.start})."
        ) from None
    except OSError as exc:
        raise SettingsError(f"Settings file {path} cannot be read: {exc.strerror or exc}.") from None


def _lower_keys(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k).lower(): _lower_keys(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_lower_keys(v) for v in value]
    return value


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _check_keys(merged: dict[str, Any], sources: _Sources) -> None:
    def unknown(key: tuple[str, ...], allowed: set[str]) -> SettingsError:
        hint = difflib.get_close_matches(key[-1], sorted(allowed), n=1)
        did_you_mean = f" Did you mean '{hint[0]}'?" if hint else ""
        return SettingsError(
            f"Unknown setting '{'.'.join(key)}' ({sources.of(key)}).{did_you_mean}"
        )

    for key, value in merged.items():
        if key not in _TOP_KEYS:
            raise unknown((key,), _TOP_KEYS)
        if key in _TABLE_KEYS:
            if not isinstance(value, dict):
                raise _bad((key,), value, "a table", sources)
            for sub in value:
                if sub not in _TABLE_KEYS[key]:
                    raise unknown((key, sub), _TABLE_KEYS[key])
    services = merged.get("services") or {}
    if not isinstance(services, dict):
        raise _bad(("services",), services, "a table of services", sources)
    for name, table in services.items():
        if not isinstance(table, dict):
            raise _bad(("services", name), table, "a table", sources)
        for sub in table:
            if sub not in _SERVICE_KEYS:
                raise unknown(("services", name, sub), _SERVICE_KEYS)


def _get(data: Mapping[str, Any], key: tuple[str, ...]) -> Any:
    node: Any = data
    for part in key:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _bad(key: tuple[str, ...], value: object, expected: str, sources: _Sources) -> SettingsError:
    shown = value
    if isinstance(value, str):
        shown = "(hidden)" if "password" in value else mask_userinfo(value)
    return SettingsError(
        f"Setting '{'.'.join(key)}' ({sources.of(key)}) must be {expected}, not {shown!r}."
    )


def _value(
    data: Mapping[str, Any], dotted: str, prefix: tuple[str, ...]
) -> tuple[tuple[str, ...], Any]:
    rel = tuple(dotted.split("."))
    return (*prefix, *rel), _get(data, rel)


def _bool(
    data: Mapping[str, Any], dotted: str, sources: _Sources,
    prefix: tuple[str, ...] = (), default: bool = False,
) -> bool:
    key, value = _value(data, dotted, prefix)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(key, value, "true or false", sources)
    return value


def _int(data: Mapping[str, Any], dotted: str, sources: _Sources, minimum: int = 0) -> int:
    key, value = _value(data, dotted, ())
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(key, value, f"a whole number of at least {minimum}", sources)
    return value


def _float(
    data: Mapping[str, Any], dotted: str, sources: _Sources, minimum: float = 0.001
) -> float:
    key, value = _value(data, dotted, ())
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise _bad(key, value, f"a number of at least {minimum:g}", sources)
    return float(value)


def _str(data: Mapping[str, Any], dotted: str, sources: _Sources) -> str:
    key, value = _value(data, dotted, ())
    if not isinstance(value, str) or not value:
        raise _bad(key, value, "a non-empty string", sources)
    return value


def _opt_str(
    data: Mapping[str, Any], dotted: str, sources: _Sources, prefix: tuple[str, ...] = ()
) -> str | None:
    key, value = _value(data, dotted, prefix)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(key, value, "a string", sources)
    return value
