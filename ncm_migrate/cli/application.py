"""The Typer app: the global options and the commands in the order `--help` lists them,
`app_for` (the app plus a monorepo's service commands), and `main()`.

Every command parses its options, calls a verb from `commands`, and prints the result;
an `NcmError` becomes one sentence on stderr and its exit code. Each command imports
`commands` when it runs, so `--help` and `--version` import no SQLAlchemy or Dynaconf.
"""

from __future__ import annotations

import gc
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import typer

from ..loader import find_root
from ..logs import redact_tracebacks, redacted_traceback
from ..service_commands import ServiceCommand, find_service_commands
from .argv import command_word, hoist_global_options, option_value
from .authoring import init_cmd, makemigrations_cmd, startservice_cmd
from .context import global_options
from .inspecting import (
    check_cmd,
    doctor_cmd,
    drift_cmd,
    history_cmd,
    lint_cmd,
    services_cmd,
    showmigrations_cmd,
    validate_cmd,
    wait_cmd,
)
from .maintenance import backup_cmd, help_cmd, repair_cmd, restore_cmd
from .migrating import migrate_cmd, rollback_cmd, sqlmigrate_cmd
from .service_commands import add_service_command


def _one_line_paragraphs(doc: str) -> str:
    """A docstring with each paragraph on one line: Rich wraps help text to the terminal but
    keeps the line breaks of the source, which left ragged lines at 80 columns."""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


# The commands in the order `--help` lists them; each one's help is its docstring.
_COMMANDS: list[tuple[str, Callable[..., None]]] = [
    ("services", services_cmd),
    ("showmigrations", showmigrations_cmd),
    ("migrate", migrate_cmd),
    ("rollback", rollback_cmd),
    ("sqlmigrate", sqlmigrate_cmd),
    ("history", history_cmd),
    ("wait", wait_cmd),
    ("doctor", doctor_cmd),
    ("validate", validate_cmd),
    ("lint", lint_cmd),
    ("check", check_cmd),
    ("drift", drift_cmd),
    ("repair", repair_cmd),
    ("backup", backup_cmd),
    ("restore", restore_cmd),
    ("makemigrations", makemigrations_cmd),
    ("startservice", startservice_cmd),
    ("init", init_cmd),
    ("help", help_cmd),
]


def _new_app(service_commands: Sequence[ServiceCommand] = ()) -> typer.Typer:
    """The app with the global options and every built-in command, then `service_commands`
    (listed under their own heading), registered through Typer's public decorators."""
    new = typer.Typer(
        name="ncm-migrate",
        help=(
            "Migrations for every service of a monorepo: Django's manage.py on Alembic's engine.\n\n"
            "A service's own commands, services/<svc>/commands/<name>.py, run as `<svc>:<name>` "
            "(listed under Service commands when there are any).\n\n"
            "Example: python manage.py migrate --env staging"
        ),
        add_completion=False,
        context_settings={"help_option_names": ["-h", "--help"]},
        pretty_exceptions_enable=False,
    )
    new.callback(invoke_without_command=True)(global_options)
    for name, function in _COMMANDS:
        help_text = _one_line_paragraphs(function.__doc__) if function.__doc__ else None
        new.command(name, help=help_text)(function)
        if name == "showmigrations":
            new.command(
                "status",
                help="Alias of showmigrations: [X] applied or [ ] pending per revision.\n\n"
                "Example: python manage.py status users --json",
            )(showmigrations_cmd)
    for command in service_commands:
        add_service_command(new, command)
    return new


app = _new_app()


def app_for(root: Path | None, argv: Sequence[str] = ()) -> typer.Typer:
    """The CLI for the monorepo at `root`: the built-in commands, plus its services'
    commands when `argv` may run or list one (no command, --help, or `svc:name`)."""
    word = command_word(argv)
    if word is not None and ":" not in word and word not in ("-h", "--help", "help"):
        return app
    found = find_service_commands(root or find_root(), env=option_value(argv, "--env"))
    return _new_app(found) if found else app


def main(root: Path | None = None, argv: list[str] | None = None) -> None:
    """Entry point for `manage.py` (which passes its own folder as `root`) and `ncm-migrate`."""
    # A command builds many long-lived objects at once (a header, graph node and plan step
    # per revision: 5,000 revisions make ~250,000 objects) and frees few; the collector's
    # default (a pass every 700 allocations) spends a quarter of a listing walking them.
    # Command processes are short; cyclic garbage is still collected, less often.
    gc.set_threshold(10_000, 10, 10)
    redact_tracebacks()
    args = hoist_global_options(list(sys.argv[1:] if argv is None else argv))
    try:
        app_for(root, args)(args=args, prog_name="manage.py" if root else "ncm-migrate", obj=root)
    except Exception as exc:  # a bug: it keeps its traceback, with passwords hidden
        sys.stderr.write(redacted_traceback(exc))
        sys.exit(1)


__all__ = ["app", "app_for", "main"]
