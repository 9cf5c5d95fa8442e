"""A service's own commands, `services/<svc>/commands/<name>.py`, offered as `<svc>:<name>`."""

from __future__ import annotations

import typer

from ..service_commands import ServiceCommand, load_service_command
from .output import exit_on_error


def add_service_command(target: typer.Typer, command: ServiceCommand) -> None:
    """Offer `services/<svc>/commands/<name>.py` as `<svc>:<name>`; its module is imported
    only when the command runs, and parses its own arguments (and --help)."""

    @target.command(
        command.full_name,
        help=command.help or f"The {command.service} service's {command.name} command.",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                          "allow_interspersed_args": False},
        add_help_option=False,
        rich_help_panel="Service commands",
    )
    def run(ctx: typer.Context) -> None:
        with exit_on_error():
            loaded = load_service_command(command)
        if isinstance(loaded, typer.Typer):
            sub = loaded
        else:
            sub = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
            sub.command(command.full_name, help=command.help or None)(loaded)
        parent = ctx.parent.info_name if ctx.parent and ctx.parent.info_name else "manage.py"
        sub(args=list(ctx.args), prog_name=f"{parent} {command.full_name}")
