"""The settings files: which there are, reading them, and the rules a file itself breaks.

A setting outside an environment section (it would be ignored) and a secret in a committed
file (`settings/settings.toml`, `services/<svc>/settings.toml`) are `SettingsError`s naming
the file. No Dynaconf here: `settings.py` loads the layers.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .environments import DEFAULT_ENV
from .errors import SettingsError
from .settings_values import SERVICE_KEYS, TOP_KEYS
from .urls import password_of

PROJECT_FILES = ("settings.toml", ".secrets.toml", "settings.local.toml")
# The settings files that are committed (settings/settings.toml, services/<svc>/settings.toml;
# .secrets.toml and settings.local.toml are git-ignored): none may hold a secret.
COMMITTED_FILE = "settings.toml"
SECRET_KEYS = {("backup", "encryption_key"), ("notify", "webhook_url")}
# Dynaconf's template expressions, which read a value (a password, say) at load time.
_TEMPLATE = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{[^{}]*\}")
# Top-level tables of a settings file that are not environments.
NOT_ENVIRONMENTS = {"default", "global", "dynaconf_merge", "dynaconf_include"}


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
            sections = read_toml(path)
            service = None if path.parent == settings_dir else path.parent.name
            check_sections(path, sections, service_file=service is not None)
            if path.name == COMMITTED_FILE:
                check_no_secrets(path, sections, service, settings_dir)
            found[path] = sections
    return found


def known_environments(files: Mapping[Path, Mapping[str, Any]]) -> list[str]:
    """The environment sections named in any of `files`, plus `development`."""
    names = {DEFAULT_ENV}
    for sections in files.values():
        names.update(k.lower() for k in sections if k.lower() not in NOT_ENVIRONMENTS)
    return sorted(names)


def check_no_secrets(
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


def check_sections(path: Path, sections: Mapping[str, Any], service_file: bool) -> None:
    """Every top-level table is an environment ([default], [staging], ...): a setting
    outside one would be ignored without a word, so it is an error."""
    keys = SERVICE_KEYS if service_file else TOP_KEYS
    for name, value in sections.items():
        if not isinstance(value, Mapping) or name.lower() in keys:
            where = f"[default.{name}]" if isinstance(value, Mapping) else "[default]"
            raise SettingsError(
                f"Settings file {path}: '{name}' is outside an environment section and would "
                f"be ignored; put it under {where} (every environment) or an environment's "
                "section such as [development]."
            )


def read_toml(path: Path) -> dict[str, Any]:
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


