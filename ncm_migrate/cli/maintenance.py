"""`repair`, `backup`, `restore`, and `help`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import BadInput
from .context import globals_of, terminal_questioner
from .output import exit_on_error, out


def repair_cmd(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="The service to repair.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Confirm in a protected environment.")] = False,
) -> None:
    """After a manual fix: clear a failed (dirty) mark, re-record edited revisions' checksums,
    and drop indexes a failed CREATE INDEX CONCURRENTLY left INVALID.

    Example: python manage.py repair billing
    """
    from .. import commands
    with exit_on_error():
        actions = commands.repair(service, questioner=terminal_questioner(yes), **globals_of(ctx).where)
        if not actions:
            out.print(f"Nothing to repair in service '{service}': no dirty mark, every applied "
                      "revision's file is as it was applied, and no INVALID index.", markup=False)
            return
        touched = ("no migration code ran" if any(a.kind == "index" for a in actions)
                   else "only its ledger changed; no migration code ran and no table was touched")
        out.print(f"Repaired service '{service}' ({touched}):", markup=False)
        for a in actions:
            done = ("" if a.kind == "index"
                    else f" (ledger row appended: {a.direction} {a.status})")
            out.print(f"  {service}:{a.revision}: {a.reason}{done}.", markup=False)


def backup_cmd(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="The service to back up.")],
    out_dir: Annotated[
        Path | None, typer.Option("-o", "--output", help="Folder (default: backup.dir/<env>/<svc>/<time>/).")
    ] = None,
) -> None:
    """Back up one service's database into a folder, with a manifest.json.

    Example: python manage.py backup billing -o backups/billing-before-release
    """
    from .. import commands
    with exit_on_error():
        folder, manifest = commands.backup(service, out_dir, **globals_of(ctx).where)
        lock = " (encrypted)" if manifest.encrypted else ""
        out.print(f"Backed up {service} ({manifest.dialect}, heads "
                  f"{', '.join(manifest.heads) or 'none'}) to {folder}{lock}", markup=False)


def restore_cmd(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="The service to restore.")],
    folder: Annotated[Path, typer.Argument(help="A folder written by `backup`.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Confirm in a protected environment.")] = False,
) -> None:
    """Replace one service's database with a backup folder's contents.

    Example: python manage.py restore billing var/backups/production/billing/20250101T120000Z --yes
    """
    from .. import commands
    with exit_on_error():
        manifest = commands.restore(service, folder, questioner=terminal_questioner(yes),
                                    **globals_of(ctx).where)
        out.print(f"Restored {service} from {folder} (taken {manifest.time}, heads "
                  f"{', '.join(manifest.heads) or 'none'})", markup=False)


def help_cmd(
    ctx: typer.Context,
    command: Annotated[str | None, typer.Argument(help="A command (default: all of them).")] = None,
) -> None:
    """Show the help of every command, or of one (the same as COMMAND --help).

    Example: python manage.py help migrate
    """
    parent = ctx.parent
    assert parent is not None
    if command is None:
        typer.echo(parent.get_help(), nl=False)
        return
    group: Any = parent.command  # Typer's group (a Click group it vendors)
    found = group.get_command(parent, command)
    if found is None:
        with exit_on_error():
            known = ", ".join(sorted(group.list_commands(parent)))
            raise BadInput(f"Unknown command '{command}'; commands: {known}.")
    assert found is not None
    if not found.get_params(parent) or ":" in command:
        # A service's command parses its own arguments, --help included.
        found.main(["--help"], prog_name=f"{parent.info_name or 'manage.py'} {command}")
        return
    found.make_context(command, ["--help"], parent=parent)
