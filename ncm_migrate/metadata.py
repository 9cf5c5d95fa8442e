"""A service's SQLAlchemy metadata: from its `models.py`, or a naming convention setting.

Alembic's operations take constraint names from the target metadata's naming convention,
so histories written against a convention run unchanged.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa

from .errors import SettingsError
from .model import ServiceConfig
from .pyfiles import import_file


def target_metadata(config: ServiceConfig) -> sa.MetaData | None:
    """The metadata Alembic should see for `config`, or None when it has none.

    The `naming_convention` setting wins; otherwise the service's `models` setting or its
    `models.py` (`metadata`, else `Base.metadata`).
    """
    if config.naming_convention:
        return sa.MetaData(naming_convention=dict(config.naming_convention))
    return load_models_metadata(config)


def has_models(config: ServiceConfig) -> bool:
    """Whether the service has a models module (`models` setting, else models.py)."""
    return bool(config.models) or (config.root / "models.py").is_file()


def load_models_metadata(config: ServiceConfig) -> sa.MetaData | None:
    if config.models:
        module_name, _, attr = config.models.partition(":")
        path = config.root / (module_name.replace(".", "/") + ".py")
        if not path.is_file():
            raise SettingsError(
                f"Setting 'services.{config.name}.models' points to {path}, which does not exist."
            )
        return _metadata_of(
            _load(path, config.name), attr, path, f"services.{config.name}.models = '{config.models}'"
        )
    path = config.root / "models.py"
    if not path.is_file():
        return None
    module = _load(path, config.name)
    if isinstance(getattr(module, "metadata", None), sa.MetaData):
        return _metadata_of(module, "metadata", path)
    return _metadata_of(module, "Base.metadata", path)


def _metadata_of(module: ModuleType, attr: str, path: Path, setting: str = "") -> sa.MetaData:
    value: object = module
    for part in attr.split("."):
        value = getattr(value, part, None)
    if not isinstance(value, sa.MetaData):
        named = f" (setting {setting})" if setting else ""
        raise SettingsError(f"{path} has no SQLAlchemy MetaData at '{attr}'{named}.")
    return value


@cache
def _load(path: Path, service: str) -> ModuleType:
    try:
        return import_file(path, f"ncm_models_{service}")
    except (Exception, SystemExit) as exc:  # user code: sys.exit() is a failed import too
        raise SettingsError(f"{path} failed to import: {type(exc).__name__}: {exc}.") from exc
