"""The global options (--env, --settings, -v, -q, --version) and what they leave for every
command (`Globals`); confirming destructive work at the terminal.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from ..ledger import tool_version
from ..logs import configure_logging, verbosity_levels
from ..questioner import Questioner, questioner_for
from .output import err


@dataclass
class Globals:
    env: str | None
    settings: Path | None
    root: Path | None
    verbosity: int

    @property
    def where(self) -> dict[str, Any]:
        return {"env": self.env, "root": self.root, "settings_dir": self.settings}


def _print_version(value: bool) -> None:
    if value:
        print(f"ncm-migrate {tool_version()}")
        raise typer.Exit(0)


def global_options(
    ctx: typer.Context,
    env: Annotated[
        str | None, typer.Option("--env", help="Environment (default: NCM_ENV, else development).")
    ] = None,
    settings: Annotated[
        Path | None, typer.Option("--settings", help="Settings folder (default: ./settings).")
    ] = None,
    verbose: Annotated[
        int, typer.Option("-v", "--verbose", count=True, show_default=False, metavar="",
                          help="More output, with the SQL run (-v); repeat for debug output (-vv).")
    ] = 0,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", metavar="", help="Only errors.")] = False,
    _version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_print_version,
                           help="Show ncm-migrate's version and exit.")
    ] = False,
) -> None:
    """Migrations for every service of a monorepo.

    Example: python manage.py migrate --env staging
    """
    verbosity = -1 if quiet else verbose
    configure_logging(verbosity_levels(verbosity))
    # `main()` passes the monorepo's root as the context object (None: found from the cwd).
    root = ctx.obj if isinstance(ctx.obj, Path) else None
    ctx.obj = Globals(env=env, settings=settings, root=root, verbosity=verbosity)
    if ctx.invoked_subcommand is None:  # bare `manage.py`: the help, and success (as Django)
        typer.echo(ctx.get_help(), nl=False)
        raise typer.Exit(0)


def globals_of(ctx: typer.Context) -> Globals:
    g = ctx.obj
    assert isinstance(g, Globals)
    return g


def _prompt(text: str) -> str:
    """The user's answer; EOFError when none comes (Ctrl-C or Ctrl-D at the prompt)."""
    try:
        answer: str = typer.prompt(text, default="", show_default=False, err=True)
    except typer.Abort:  # Click's prompt turns KeyboardInterrupt and EOFError into Abort
        err.print()
        raise EOFError from None
    return answer


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stderr.isatty()


def terminal_questioner(yes: bool) -> Questioner:
    """Typed confirmation on a terminal; elsewhere only --yes confirms."""
    return questioner_for(yes, _interactive(), _prompt)
