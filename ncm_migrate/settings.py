"""Layered settings for one environment, validated into typed values.

The Dynaconf loader (with `settings_values.py`, which asks Dynaconf where a value came
from, the only modules that import Dynaconf). Layers, lowest first: the package's defaults,
`settings/settings.toml`, `settings/.secrets.toml`, `settings/settings.local.toml`, each
service's own `services/<svc>/settings.toml`, then `NCM_` environment variables.
Command-line flags are applied by the caller on top. The files themselves are read and
checked in `settings_files.py`; the keys and values in `settings_values.py`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from .config import (
    BackupSettings,
    ConnectSettings,
    DdlSettings,
    HookSettings,
    LockSettings,
    NotifySettings,
    Settings,
)
from .discovery import find_service_dirs
from .environments import (
    DEFAULT_ENV,
    check_environment_name,
    closest_environment,
    section_warnings,
)
from .errors import SettingsError, UnknownEnvironment
from .ledger import ACTOR_LENGTH, run_id_problem
from .settings_files import (
    NOT_ENVIRONMENTS,
    PROJECT_FILES,
    check_sections,
    known_environments,
    read_settings_files,
    read_toml,
)
from .settings_values import (
    HOOK_EVENTS,
    SettingSources,
    bad_setting,
    check_setting_keys,
    check_version_tables,
    service_config,
    setting_at,
    setting_bool,
    setting_duration_ms,
    setting_float,
    setting_hooks,
    setting_int,
    setting_opt_str,
    setting_str,
    setting_windows,
)
from .urls import remember_secret_text

log = logging.getLogger(__name__)
_warned: set[tuple[Path, str]] = set()
_DEFAULTS = Path(__file__).with_name("defaults.toml")
# NCM_* variables that are not settings: the environment, the actor, the run id, the project
# root, and the Docker entrypoint's app folder.
NOT_SETTINGS = {"NCM_ENV", "NCM_ACTOR", "NCM_RUN_ID", "NCM_ROOT", "NCM_APP_DIR"}


def settings_dir_of(root: Path, settings_dir: Path | None = None) -> Path:
    return (settings_dir or root / "settings").resolve()


def chosen_environment(env: str | None, environ: Mapping[str, str]) -> str:
    """`env` (the `--env` flag), else `NCM_ENV`, else `development`; an empty, overlong or
    unsafe name is `SettingsError` naming where it came from."""
    if env is None and "NCM_ENV" not in environ:
        return DEFAULT_ENV
    name, source = (env, "--env") if env is not None else (environ["NCM_ENV"], "NCM_ENV")
    check_environment_name(name, source)
    return name.lower()


def _check_actor_and_run_id(environ: Mapping[str, str]) -> None:
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
    run_id = environ.get("NCM_RUN_ID")
    problem = run_id_problem(run_id) if run_id else None
    if problem:
        raise SettingsError(f"NCM_RUN_ID {problem}: set another run id.")


def _own_keys(
    files: Mapping[Path, Mapping[str, Any]], settings_dir: Path, env: str,
    env_layer: Mapping[str, Any],
) -> dict[str, set[str]]:
    """For each environment, the settings its sections hold (a service's own file counts as
    `services`); the `NCM_` variables count for the chosen one."""
    own: dict[str, set[str]] = {DEFAULT_ENV: set()}
    for path, sections in files.items():
        for name, table in sections.items():
            if name.lower() in NOT_ENVIRONMENTS:
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
    _check_actor_and_run_id(environ)
    for name in PROJECT_FILES:
        if (sdir / name).exists() and not (sdir / name).is_file():
            raise SettingsError(f"Settings file {sdir / name} is not a file; make it one, or remove it.")
    files = [str(_DEFAULTS)] + [str(sdir / n) for n in PROJECT_FILES if (sdir / n).is_file()]
    for name in files[1:]:
        # Clear errors naming the file (and line), before Dynaconf's own (a top-level
        # `development = 5` is an AttributeError inside Dynaconf).
        check_sections(Path(name), read_toml(Path(name)), service_file=False)
    project = _dynaconf(files, env)
    env_layer = _lower_keys(_env_layer(environ))
    merged = _deep_merge(_lower_keys(project.as_dict()), env_layer)
    sources = SettingSources(project, env_layer, _DEFAULTS, {})

    services_dir = setting_str(merged, "services_dir", sources)
    services_glob = setting_str(merged, "services_glob", sources)
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

    check_setting_keys(merged, sources)
    names = [d.name for d in service_dirs]
    for name in merged.get("services") or {}:
        if name not in names:
            raise SettingsError(
                f"Setting 'services.{name}' ({sources.of(('services', name))}) names a service "
                f"with no folder {services_dir}/{name}/migrations; services found: "
                f"{', '.join(names) or '(none)'}."
            )
    services = tuple(
        service_config(folder, merged, env, root, sources) for folder in service_dirs
    )
    for svc in services:
        for dep in svc.depends_on:
            if dep not in names:
                raise SettingsError(
                    f"Setting 'services.{svc.name}.depends_on' "
                    f"({sources.of(('services', svc.name, 'depends_on'))}) names unknown "
                    f"service '{dep}'; services found: {', '.join(names)}."
                )
    check_version_tables(services, root, sources)
    protected = setting_bool(merged, "protected", sources)
    severity = setting_at(merged, ("lint", "severity"))
    if severity is None:
        severity = "error" if protected else "warning"
    if severity not in ("warning", "error"):
        raise bad_setting(("lint", "severity"), severity, "'warning' or 'error'", sources)
    audit = setting_opt_str(merged, "audit.log_path", sources)
    backup_dir = Path(setting_str(merged, "backup.dir", sources))
    return Settings(
        root=root,
        env=env,
        services=services,
        connect=ConnectSettings(
            retries=setting_int(merged, "connect.retries", sources, minimum=0),
            max_wait_s=setting_float(merged, "connect.max_wait_s", sources),
            timeout_s=setting_float(merged, "connect.timeout_s", sources),
            read_timeout_s=setting_float(merged, "connect.read_timeout_s", sources, minimum=0.0),
            keepalive_s=setting_float(merged, "connect.keepalive_s", sources, minimum=0.0),
        ),
        lock=LockSettings(
            timeout_s=setting_float(merged, "lock.timeout_s", sources, minimum=0.0),
            lease_s=setting_float(merged, "lock.lease_s", sources),
        ),
        ddl=DdlSettings(
            lock_timeout_ms=setting_duration_ms(merged, "ddl.lock_timeout", sources),
            statement_timeout_ms=setting_duration_ms(merged, "ddl.statement_timeout", sources),
            retries=setting_int(merged, "ddl.retries", sources, minimum=0),
            retry_budget_s=setting_float(merged, "ddl.retry_budget_s", sources, minimum=0.0),
        ),
        backup=BackupSettings(
            before_migrate=setting_bool(merged, "backup.before_migrate", sources),
            dir=backup_dir if backup_dir.is_absolute() else root / backup_dir,
            encryption_key=setting_opt_str(merged, "backup.encryption_key", sources),
        ),
        protected=protected,
        jobs=setting_int(merged, "jobs", sources, minimum=1),
        read_jobs=setting_int(merged, "read_jobs", sources, minimum=1),
        rollback_on_failure=setting_bool(merged, "rollback_on_failure", sources),
        allow_checksum_drift=setting_bool(merged, "allow_checksum_drift", sources),
        lint_severity=cast(Literal["warning", "error"], severity),
        lint_squawk=setting_bool(merged, "lint.squawk", sources),
        squawk_pg_version=_pg_version(merged, sources),
        audit_log_path=(root / audit) if audit else None,
        known_envs=tuple(known),
        services_dir=root / services_dir,
        hooks=HookSettings(
            **{event: setting_hooks(merged, f"hooks.{event}", sources) for event in HOOK_EVENTS},
            timeout_s=setting_float(merged, "hooks.timeout_s", sources),
        ),
        notify=_notify(merged, sources),
        windows=setting_windows(merged, sources),
    )


def _notify(merged: dict[str, Any], sources: SettingSources) -> NotifySettings:
    """The webhook's settings; its URL (a secret: keep it in settings/.secrets.toml or
    NCM_NOTIFY__WEBHOOK_URL) must be http(s) and is never shown whole."""
    url = setting_opt_str(merged, "notify.webhook_url", sources)
    if url is not None and not url.startswith(("https://", "http://")):
        raise SettingsError(
            f"Setting 'notify.webhook_url' ({sources.of(('notify', 'webhook_url'))}) must be an "
            "http:// or https:// URL."
        )
    if url:
        parts = urlsplit(url)
        remember_secret_text(parts.path.strip("/") + (f"?{parts.query}" if parts.query else ""))
    return NotifySettings(
        webhook_url=url or None,
        timeout_s=setting_float(merged, "notify.timeout_s", sources),
        retries=setting_int(merged, "notify.retries", sources, minimum=0),
    )


def _pg_version(merged: dict[str, Any], sources: SettingSources) -> str | None:
    """`lint.pg_version`: the PostgreSQL version squawk checks revisions for ("16", "15.4")."""
    version = setting_opt_str(merged, "lint.pg_version", sources)
    if version is not None and not re.fullmatch(r"\d+(\.\d+){0,2}", version):
        raise bad_setting(("lint", "pg_version"), version, 'a PostgreSQL version such as "16" or "15.4"',
                          sources)
    return version


def service_folders(
    root: Path,
    env: str | None = None,
    settings_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[Path]:
    """The services' folders for `env`, as `load_settings(...).services` finds them, for
    `--help` (which lists the services' own commands): without Dynaconf when
    `services_dir` and `services_glob` are plain text in the files, merged as Dynaconf
    merges them (file by file: its [default], the environment's section, its [global]);
    through `load_settings` when an `NCM_` or Dynaconf variable, a `dynaconf_*` key or an
    `@` token may change them. Errors as `load_settings`'s."""
    environ = os.environ if environ is None else environ
    root = root.resolve()
    sdir = settings_dir_of(root, settings_dir)
    layout = _plain_layout(sdir, chosen_environment(env, environ), environ)
    if layout is None:
        return [s.root for s in load_settings(root, env, settings_dir, environ).services]
    return find_service_dirs(root, *layout)


def _plain_layout(sdir: Path, env: str, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """`services_dir` and `services_glob` read from the files alone, or None when Dynaconf's
    loading could give something else."""
    if "NCM_SERVICES_DIR" in environ or "NCM_SERVICES_GLOB" in environ or any(
        "DYNACONF" in name.upper() for name in environ
    ):
        return None
    values = {"services_dir": "", "services_glob": ""}
    for path in (_DEFAULTS, *(sdir / name for name in PROJECT_FILES)):
        if not path.is_file():
            continue
        try:
            sections = {str(k).lower(): v for k, v in read_toml(path).items()}
        except SettingsError:
            return None
        for section in ("default", env, "global"):
            table = sections.get(section, {})
            if not isinstance(table, Mapping):
                return None
            for key, value in table.items():
                key = str(key).lower()
                if key.startswith("dynaconf") or (
                    key in values and (not isinstance(value, str) or value.startswith("@"))
                ):
                    return None
                if key in values:
                    values[key] = value
        if any(k.startswith("dynaconf") for k in sections):
            return None
    return values["services_dir"], values["services_glob"]


def _dynaconf(files: list[str], env: str) -> Any:
    from dynaconf import Dynaconf  # here: finding service folders for --help needs none

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


