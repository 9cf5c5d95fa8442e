"""What the settings may hold, and each value checked into a typed one.

The known keys (`TOP_KEYS`, `SERVICE_KEYS`, `TABLE_KEYS`), the check that the merged layers
name no other, the typed readers (`setting_bool`, `setting_int`, ...) that raise
`SettingsError` naming the key and where its value came from (`SettingSources`), and each
service's `ServiceConfig`. `settings.py` merges the layers and calls these.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from .config import DURATION_HINT, Hook, duration_ms
from .errors import SettingsError
from .model import BackendName, ServiceConfig
from .rules import version_table_findings
from .urls import backend_of, check_url, mask_userinfo, remember_secret, resolve_sqlite_path
from .windows import EXAMPLE, Window, parse_windows

HOOK_EVENTS = ("before_migrate", "after_step", "after_migrate", "after_failure", "after_write")
BACKENDS = ("sql", "mongo", "redis")
TOP_KEYS = {
    "services_dir", "services_glob", "database_url", "services", "connect", "lock",
    "protected", "backup", "lint", "audit", "jobs", "read_jobs", "rollback_on_failure",
    "allow_checksum_drift", "hooks", "notify", "ddl", "windows",
}
SERVICE_KEYS = {
    "database_url", "backend", "version_table", "depends_on", "naming_convention", "models",
    "revision_ids", "use_env_py", "enabled", "database", "key_prefix", "key_prefixes",
}
TABLE_KEYS = {
    "connect": {"retries", "max_wait_s", "timeout_s", "read_timeout_s", "keepalive_s"},
    "lock": {"timeout_s", "lease_s"},
    "backup": {"before_migrate", "dir", "encryption_key"},
    "ddl": {"lock_timeout", "statement_timeout", "retries", "retry_budget_s"},
    "lint": {"severity", "squawk", "pg_version"},
    "audit": {"log_path"},
    "hooks": {*HOOK_EVENTS, "timeout_s"},
    "notify": {"webhook_url", "timeout_s", "retries"},
}


def service_config(
    folder: Path, merged: dict[str, Any], env: str, root: Path, sources: SettingSources
) -> ServiceConfig:
    """The service in `folder` as the merged layers configure it for `env`, each value checked."""
    name = folder.name
    raw: dict[str, Any] = dict((merged.get("services") or {}).get(name) or {})
    prefix = ("services", name)
    own_url = raw.get("database_url")
    url = own_url if own_url is not None else merged.get("database_url")
    url_key = (*prefix, "database_url") if own_url is not None else ("database_url",)
    enabled = setting_bool(raw, "enabled", sources, prefix=prefix, default=True)
    backend = raw.get("backend")
    shared_url_of_other_kind = isinstance(url, str) and backend_of(url) != backend
    if own_url is None and backend in BACKENDS and shared_url_of_other_kind:
        url = None  # the shared database_url is for services of its own kind
    if backend is not None and backend not in BACKENDS:
        raise bad_setting((*prefix, "backend"), backend, "'sql', 'mongo' or 'redis'", sources)
    if url is not None:
        if not isinstance(url, str) or not url.strip():
            raise bad_setting(url_key, "(hidden)", "a database URL string", sources)
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
    if backend not in BACKENDS:
        raise bad_setting((*prefix, "backend"), backend, "'sql', 'mongo' or 'redis'", sources)
    version_default = "alembic_version" if own_url is not None else f"alembic_version_{name}"
    version_table = raw.get("version_table", version_default)
    if not isinstance(version_table, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", version_table):
        raise bad_setting((*prefix, "version_table"), version_table,
                   "a table name of at most 63 letters, digits and _ (PostgreSQL's limit)", sources)
    depends_on = raw.get("depends_on", [])
    if isinstance(depends_on, str):
        depends_on = [depends_on]
    if not isinstance(depends_on, list) or not all(isinstance(d, str) for d in depends_on):
        raise bad_setting((*prefix, "depends_on"), depends_on, "a list of service names", sources)
    convention = raw.get("naming_convention") or {}
    if not isinstance(convention, dict) or not all(isinstance(v, str) for v in convention.values()):
        raise bad_setting((*prefix, "naming_convention"), convention, "a table of strings", sources)
    revision_ids = raw.get("revision_ids", "numbered")
    if revision_ids not in ("numbered", "hash"):
        raise bad_setting((*prefix, "revision_ids"), revision_ids, "'numbered' or 'hash'", sources)
    models = raw.get("models")
    if models is not None and (not isinstance(models, str) or ":" not in models):
        raise bad_setting((*prefix, "models"), models, "'module:attribute'", sources)
    skip = None
    if not enabled:
        skip = f"disabled in environment '{env}' (services.{name}.enabled = false)"
    elif url is None:
        skip = f"no database_url in environment '{env}'"
    return ServiceConfig(
        name=name,
        root=folder,
        backend=cast(BackendName, backend),
        database_url=url,
        version_table=version_table,
        depends_on=tuple(depends_on),
        enabled=enabled,
        naming_convention=tuple(sorted((str(k), v) for k, v in convention.items())),
        models=models,
        revision_ids=cast(Literal["numbered", "hash"], revision_ids),
        use_env_py=setting_bool(raw, "use_env_py", sources, prefix=prefix, default=False),
        database_name=setting_opt_str(raw, "database", sources, prefix=prefix),
        skip_reason=skip,
        **_key_prefixes(raw, prefix, sources),
    )


def _key_prefixes(raw: Mapping[str, Any], prefix: tuple[str, ...],
                  sources: SettingSources) -> dict[str, Any]:
    """A Redis service's `key_prefix` (ncm-migrate's own keys, default `ncm:`) and
    `key_prefixes` (the service's keys that backups hold; default: all but ncm-migrate's)."""
    own = raw.get("key_prefix", "ncm:")
    if not isinstance(own, str) or not own or any(c in own for c in "*?[]\\"):
        raise bad_setting((*prefix, "key_prefix"), own,
                          "a non-empty key prefix without the glob characters * ? [ ] \\", sources)
    keys = raw.get("key_prefixes", [])
    if isinstance(keys, str):
        keys = [keys]
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        raise bad_setting((*prefix, "key_prefixes"), keys, "a list of non-empty key prefixes", sources)
    return {"key_prefix": own, "key_prefixes": tuple(keys)}


def check_version_tables(services: tuple[ServiceConfig, ...], root: Path, sources: SettingSources) -> None:
    """Two services on one database must not share a version table (`rules`' rule)."""
    for finding in version_table_findings(services, root):
        raise SettingsError(
            f"{finding.message} ({sources.of(('services', finding.service))})."
        )


@dataclass
class SettingSources:
    """Says where a key's value came from, for error messages."""

    project: Any  # the Dynaconf object of the project's files
    env_layer: dict[str, Any]
    defaults: Path  # the package's defaults file, whose values are the "built-in default"
    service_files: dict[str, Path]
    service_layers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def of(self, key: tuple[str, ...]) -> str:
        if setting_at(self.env_layer, key) is not None:
            return "environment variable NCM_" + "__".join(k.upper() for k in key)
        if (
            len(key) >= 3
            and key[0] == "services"
            and setting_at(self.service_layers.get(key[1], {}), key[2:]) is not None
        ):
            return str(self.service_files[key[1]])
        from dynaconf.utils.inspect import get_history  # only when a value is wrong

        try:
            history = get_history(self.project, key=".".join(key))
        except (KeyError, AttributeError, TypeError):
            history = []
        for entry in reversed(history):
            ident = str(entry.get("identifier", ""))
            if ident and ident != str(self.defaults):
                return f"{ident} [{entry.get('env', 'default')}]"
        return "built-in default"


def check_setting_keys(merged: dict[str, Any], sources: SettingSources) -> None:
    def unknown(key: tuple[str, ...], allowed: set[str]) -> SettingsError:
        hint = difflib.get_close_matches(key[-1], sorted(allowed), n=1)
        did_you_mean = f" Did you mean '{hint[0]}'?" if hint else ""
        return SettingsError(
            f"Unknown setting '{'.'.join(key)}' ({sources.of(key)}).{did_you_mean}"
        )

    for key, value in merged.items():
        if key not in TOP_KEYS:
            raise unknown((key,), TOP_KEYS)
        if key in TABLE_KEYS:
            if not isinstance(value, dict):
                raise bad_setting((key,), value, "a table", sources)
            for sub in value:
                if sub not in TABLE_KEYS[key]:
                    raise unknown((key, sub), TABLE_KEYS[key])
    services = merged.get("services") or {}
    if not isinstance(services, dict):
        raise bad_setting(("services",), services, "a table of services", sources)
    for name, table in services.items():
        if not isinstance(table, dict):
            raise bad_setting(("services", name), table, "a table", sources)
        for sub in table:
            if sub not in SERVICE_KEYS:
                raise unknown(("services", name, sub), SERVICE_KEYS)


def setting_at(data: Mapping[str, Any], key: tuple[str, ...]) -> Any:
    node: Any = data
    for part in key:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def setting_windows(merged: Mapping[str, Any], sources: SettingSources) -> tuple[Window, ...]:
    """`windows`: a list of maintenance windows such as "Sat 02:00-04:00 UTC"."""
    value = merged.get("windows")
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise bad_setting(("windows",), value, f'a list of windows such as [{EXAMPLE}]', sources)
    try:
        return parse_windows(value)
    except ValueError as exc:
        raise SettingsError(f"Setting 'windows' ({sources.of(('windows',))}): {exc}.") from None


def bad_setting(key: tuple[str, ...], value: object, expected: str, sources: SettingSources) -> SettingsError:
    shown = value
    if isinstance(value, str):
        shown = "(hidden)" if "password" in value else mask_userinfo(value)
    return SettingsError(
        f"Setting '{'.'.join(key)}' ({sources.of(key)}) must be {expected}, not {shown!r}."
    )


def _setting_value(
    data: Mapping[str, Any], dotted: str, prefix: tuple[str, ...]
) -> tuple[tuple[str, ...], Any]:
    rel = tuple(dotted.split("."))
    return (*prefix, *rel), setting_at(data, rel)


def setting_bool(
    data: Mapping[str, Any], dotted: str, sources: SettingSources,
    prefix: tuple[str, ...] = (), default: bool = False,
) -> bool:
    key, value = _setting_value(data, dotted, prefix)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_setting(key, value, "true or false", sources)
    return value


def setting_int(data: Mapping[str, Any], dotted: str, sources: SettingSources, minimum: int = 0) -> int:
    key, value = _setting_value(data, dotted, ())
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise bad_setting(key, value, f"a whole number of at least {minimum}", sources)
    return value


def setting_float(
    data: Mapping[str, Any], dotted: str, sources: SettingSources, minimum: float = 0.001
) -> float:
    key, value = _setting_value(data, dotted, ())
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise bad_setting(key, value, f"a number of at least {minimum:g}", sources)
    return float(value)


def setting_str(data: Mapping[str, Any], dotted: str, sources: SettingSources) -> str:
    key, value = _setting_value(data, dotted, ())
    if not isinstance(value, str) or not value:
        raise bad_setting(key, value, "a non-empty string", sources)
    return value


def setting_duration_ms(data: Mapping[str, Any], dotted: str, sources: SettingSources) -> int | None:
    """A timeout (`config.duration_ms`) in milliseconds; None for `""`, the server's own."""
    key, value = _setting_value(data, dotted, ())
    ms = duration_ms(value)
    if ms is None:
        raise bad_setting(key, value, DURATION_HINT, sources)
    return None if ms < 0 else ms


def setting_opt_str(
    data: Mapping[str, Any], dotted: str, sources: SettingSources, prefix: tuple[str, ...] = ()
) -> str | None:
    key, value = _setting_value(data, dotted, prefix)
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_setting(key, value, "a string", sources)
    return value


_CALLABLE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def setting_hooks(data: Mapping[str, Any], dotted: str, sources: SettingSources) -> tuple[Hook, ...]:
    """A list of hooks: each a command as a list of strings (run without a shell), or a
    `"module:function"` string (a single one may stand alone, not in a list)."""
    key, value = _setting_value(data, dotted, ())
    expected = ('a list of hooks, each a command as a list of strings (["ruff", "format"]) '
                'or a "module:function" string')
    if value is None:
        return ()
    if isinstance(value, str) or (isinstance(value, list) and value and all(
            isinstance(v, str) for v in value) and not all(_CALLABLE.fullmatch(v) for v in value)):
        value = [value]  # one hook on its own: a callable, or one command's argv
    if not isinstance(value, list):
        raise bad_setting(key, value, expected, sources)
    hooks = []
    for item in value:
        if isinstance(item, str) and _CALLABLE.fullmatch(item):
            hooks.append(Hook(call=item))
        elif isinstance(item, list) and item and all(isinstance(a, str) and a for a in item):
            hooks.append(Hook(argv=tuple(item)))
        else:
            raise bad_setting(key, item, expected, sources)
    return tuple(hooks)
