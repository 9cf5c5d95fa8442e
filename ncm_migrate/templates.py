"""Jinja2 templates for new revision files, and the order they are looked up in.

`<type>.py.j2` for SQL and `<type>.mongo.py.j2` for MongoDB services, found first in
`services/<svc>/migrations/templates/`, then `settings/templates/`, then the package.
"""

from __future__ import annotations

import ast
import json
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import jinja2

from .errors import BadInput
from .model import MIGRATION_TYPES, ServiceConfig

PACKAGE_TEMPLATES = Path(__file__).with_name("templates")
BASE_IMPORTS = ("import sqlalchemy as sa", "from alembic import op")
_IMPORTS_MARK = "#__ncm_imports__"


@dataclass(frozen=True)
class RevisionText:
    """What a template is given to render one revision file.

    Templates see these names: `message`, `revision`, `down_revision`, `branch_labels`,
    `depends_on`, `requires`, `migration_type`, `phase` ("pre" or "post"), `service`,
    `backend`, `dialect` (e.g.
    `postgresql`, or `mongo`), `create_date`, `upgrades` and `downgrades` (code indented
    by four spaces, empty when there is none) and `imports` (the import lines the code
    needs). The filter `pyrepr` writes a value as a Python literal.
    """

    message: str
    revision: str
    migration_type: str
    service: str
    backend: str
    dialect: str
    create_date: str
    down_revision: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    upgrades: str = ""
    downgrades: str = ""
    imports: tuple[str, ...] = ()
    branch_labels: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()
    phase: str = "pre"


def template_name(migration_type: str, backend: str) -> str:
    """`schema.py.j2`, or `schema.mongo.py.j2` for a MongoDB service (`.redis.py.j2` for Redis)."""
    if migration_type not in MIGRATION_TYPES:
        raise BadInput(
            f"Unknown migration type '{migration_type}'; choose one of {', '.join(MIGRATION_TYPES)}."
        )
    return f"{migration_type}.{backend}.py.j2" if backend != "sql" else f"{migration_type}.py.j2"


def search_path(config: ServiceConfig, settings_dir: Path) -> list[Path]:
    """Where templates are looked up, first match wins."""
    return [config.migrations_dir / "templates", settings_dir / "templates", PACKAGE_TEMPLATES]


def find_template(config: ServiceConfig, settings_dir: Path, migration_type: str) -> Path:
    """The template file `makemigrations` uses for `config` and `migration_type`."""
    name = template_name(migration_type, config.backend)
    folders = search_path(config, settings_dir)
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    raise BadInput(
        f"No template '{name}' for service '{config.name}'; looked in "
        f"{', '.join(str(f) for f in folders)}. Add one to settings/templates/."
    )


def render_revision(config: ServiceConfig, settings_dir: Path, text: RevisionText) -> str:
    """The text of a new revision file, from the first template found for its type."""
    path = find_template(config, settings_dir, text.migration_type)
    try:
        rendered = _environment(path.parent).get_template(path.name).render(
            message=docstring_text(text.message),
            revision=text.revision,
            down_revision=_one_or_tuple(text.down_revision),
            branch_labels=_one_or_tuple(text.branch_labels),
            depends_on=_one_or_tuple(text.depends_on),
            requires=list(text.requires),
            migration_type=text.migration_type,
            phase=text.phase,
            service=text.service,
            backend=text.backend,
            dialect=text.dialect,
            create_date=text.create_date,
            upgrades=text.upgrades.rstrip(),
            downgrades=text.downgrades.rstrip(),
            imports=_IMPORTS_MARK if text.backend == "sql" else "\n".join(text.imports),
        )
    except jinja2.TemplateError as exc:
        where = f"{path}:{exc.lineno}" if isinstance(exc, jinja2.TemplateSyntaxError) else str(path)
        raise BadInput(f"Template {where} cannot be rendered: {exc}.") from None
    except UnicodeDecodeError as exc:
        raise BadInput(f"Template {path} cannot be read: it is not UTF-8 text (byte {exc.start}).") from None
    except OSError as exc:
        raise BadInput(f"Template {path} cannot be read: {exc.strerror or exc}.") from None
    return _fill_imports(rendered, [*BASE_IMPORTS, *text.imports])


def render_scaffold(template: str, **context: object) -> str:
    """One of the package's scaffolding files (`manage.py`, `settings.toml`, ...)."""
    return _environment(PACKAGE_TEMPLATES / "scaffold").get_template(f"{template}.j2").render(**context)


def _environment(folder: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["pyrepr"] = pyrepr
    return env


def pyrepr(value: object) -> str:
    """`value` as a Python literal, strings in double quotes."""
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple):
        items = ", ".join(pyrepr(v) for v in value)
        return f"({items},)" if len(value) == 1 else f"({items})"
    if isinstance(value, list):
        return "[" + ", ".join(pyrepr(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as a literal")


def docstring_text(message: str) -> str:
    """`message` made safe inside a triple-quoted docstring, wrapped at 100 characters."""
    text = " ".join(message.split()) or "Revision."
    text = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    text = textwrap.fill(text, 100, break_long_words=False, break_on_hyphens=False)
    return text + " " if text.endswith('"') else text


def sort_imports(lines: Iterable[str]) -> list[str]:
    """Import lines in isort's order: `import x` before `from x import y`, by module."""
    unique = sorted(set(lines))
    plain = sorted((s for s in unique if s.startswith("import ")), key=lambda s: s.split()[1].lower())
    froms = sorted((s for s in unique if s.startswith("from ")), key=lambda s: s.split()[1].lower())
    return plain + froms


def _fill_imports(rendered: str, imports: Sequence[str]) -> str:
    """Replace the imports mark with the imports, marking those the code does not use, so
    that a freshly written file passes linters before anyone has edited it."""
    if _IMPORTS_MARK not in rendered:
        return rendered
    try:
        tree = ast.parse(rendered)
    except SyntaxError:
        return rendered.replace(_IMPORTS_MARK, "\n".join(sort_imports(imports)))
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    lines = []
    for line in sort_imports(imports):
        bound = line.split()[-1]
        lines.append(line if bound in used else f"{line}  # noqa: F401")
    return rendered.replace(_IMPORTS_MARK, "\n".join(lines))


def _one_or_tuple(values: tuple[str, ...]) -> str | tuple[str, ...] | None:
    if not values:
        return None
    return values[0] if len(values) == 1 else values
