"""The commands that look and change nothing: `services`, `showmigrations`, `history`, `wait`,
`doctor`, `validate`, `lint`, `check` and `drift`.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..urls import redact_known
from .context import globals_of
from .output import (
    OutputFormat,
    chosen_format,
    err,
    exit_on_error,
    out,
    print_findings,
    print_json,
    write_plain,
)

# The findings commands' report options (validate, lint, check, drift), declared once.
JsonOption = Annotated[bool, typer.Option("--json", help="Same as --format json.")]
FormatOption = Annotated[
    OutputFormat | None,
    typer.Option("--format", help="text, json, github (workflow commands), sarif or junit."),
]
OutputOption = Annotated[
    Path | None, typer.Option("--output", "-o", help="Write the report to this file.")
]


def services_cmd(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the services found, their backend, masked URL and dependencies.

    Example: python manage.py services --env staging --json
    """
    from .. import commands
    with exit_on_error():
        found = commands.services(**globals_of(ctx).where)
        if as_json:
            print_json([{k: v for k, v in asdict(s).items() if k != "skip_reason"} for s in found])
            return
        table = Table("service", "backend", "url", "version table", "depends on", box=None)
        for s in found:
            url = s.url if s.skip_reason is None else f"(skipped: {s.skip_reason})"
            version_table = "-" if s.backend != "sql" else s.version_table  # MongoDB, Redis: the ledger
            table.add_row(s.name, s.backend, url, version_table, ", ".join(s.depends_on))
        out.print(table)


def showmigrations_cmd(
    ctx: typer.Context,
    services: Annotated[list[str] | None, typer.Argument(help="Services (default: all).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show every revision, [X] applied or [ ] pending, in the order they run.

    With pending counts (post-deploy revisions apart), dirty marks and forked heads;
    --json adds each service's heads and current revisions.

    Example: python manage.py showmigrations users billing
    """
    from .. import commands
    with exit_on_error():
        found = commands.showmigrations(services or (), **globals_of(ctx).where)
        if as_json:
            print_json({"services": [
                {f.name: getattr(s, f.name) for f in fields(s) if f.name != "conflicting_heads"}
                for s in found
            ]})
            return
        lines: list[str] = []
        for s in found:
            note = f"  (DIRTY at {s.dirty}: run repair {s.name})" if s.dirty else ""
            lines.append(f"{s.name} [{s.backend}]{note}")
            for r in s.revisions:
                mark = "?" if r.missing else "X" if r.applied else " "
                doc = "  (applied, no file)" if r.missing else f"  {r.doc}" if r.doc else ""
                post = "  (post-deploy)" if r.phase == "post" else ""
                lines.append(f" [{mark}] {r.revision}{doc}{post}")
            if s.unknown:
                lines.append(f" applied but not on disk: {', '.join(s.unknown)} (check out the "
                             "branch that has them)")
            if not s.revisions:
                lines.append(" (no migrations)")
            if s.conflicting_heads:
                lines.append(f" several heads: {', '.join(s.conflicting_heads)} "
                             f"(run makemigrations {s.name} --merge)")
            elif s.pending:
                if s.pending > s.pending_post:
                    lines.append(f" {s.pending - s.pending_post} pending")
                if s.pending_post:
                    waiting = [r.revision for r in s.revisions if r.phase == "post" and not r.applied]
                    lines.append(f" {s.pending_post} pending post-deploy (after the deploy: "
                                 f"migrate --phase post): {', '.join(waiting)}")
        write_plain(lines)


def history_cmd(
    ctx: typer.Context,
    service: Annotated[str | None, typer.Argument(help="One service (default: all).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Latest N rows.")] = None,
    run: Annotated[str | None, typer.Option("--run", metavar="ID", help="Only this run's rows.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show the ledger: who applied what, when, how long, the outcome, and in which run.

    Example: python manage.py history users --limit 20
    """
    from .. import commands
    with exit_on_error():
        rows = commands.history([service] if service else [], limit=limit, run=run,
                                **globals_of(ctx).where)
        if as_json:
            print_json(rows)
            return
        table = Table("started", "service", "revision", "dir", "status", "ms", "actor",
                      "host", "env", "run", box=None)
        for r in rows:
            table.add_row(r.started_at[:19], r.service, r.revision, r.direction, r.status,
                          f"{r.duration_ms or 0:.0f}", r.actor, r.host, r.environment, r.run_id or "")
        out.print(table)


def wait_cmd(
    ctx: typer.Context,
    services: Annotated[list[str] | None, typer.Argument(help="Services (default: all).")] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0, help="Seconds (default: connect.max_wait_s).")
    ] = None,
) -> None:
    """Wait until every selected database accepts a real query; exit 4 if one never does.

    Example: python manage.py wait --env docker --timeout 120
    """
    from .. import commands
    with exit_on_error():
        took = commands.wait(services or (), timeout=timeout, **globals_of(ctx).where)
        if globals_of(ctx).verbosity >= 0:
            for name, seconds in took.items():
                out.print(f"{name}: up ({seconds:.1f}s)", markup=False)


def doctor_cmd(
    ctx: typer.Context,
    services: Annotated[list[str] | None, typer.Argument(help="Services (default: all).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Per service: reachable, latency, server version, privileges, heads, pending, lock,
    and indexes a failed CREATE INDEX CONCURRENTLY left INVALID.

    Exits 1 when a database is unreachable or a revision file cannot be read.

    Example: python manage.py doctor --env staging --json
    """
    from .. import commands
    with exit_on_error():
        found = commands.doctor(services or (), **globals_of(ctx).where)
        if as_json:
            print_json([{**asdict(d), "details": dict(d.details)} for d in found])
        else:
            table = Table("service", "reachable", "latency", "server", "can create",
                          "heads", "pending", "lock", box=None)
            for d in found:
                table.add_row(
                    d.service, "yes" if d.reachable else "[red]no[/]",
                    f"{d.latency_ms:.1f}ms" if d.latency_ms is not None else "-",
                    d.server_version or "-",
                    {True: "yes", False: "[red]no[/]", None: "-"}[d.can_create],
                    ", ".join(d.heads) or "-", "-" if d.pending is None else str(d.pending),
                    d.lock or "-",
                )
            out.print(table)
            for d in found:
                if d.error:
                    err.print(redact_known(d.error), markup=False)
                if d.invalid_indexes:
                    err.print(f"{d.service}: INVALID indexes left by a failed CREATE INDEX "
                              f"CONCURRENTLY: {', '.join(d.invalid_indexes)}; run `manage.py "
                              f"repair {d.service}` to drop them.", markup=False)
        if any(d.error for d in found):
            raise typer.Exit(1)


def validate_cmd(
    ctx: typer.Context,
    services: Annotated[list[str] | None, typer.Argument(help="Services (default: all).")] = None,
    as_json: JsonOption = False,
    strict: Annotated[bool, typer.Option("--strict", help="Warnings fail too.")] = False,
    fmt: FormatOption = None,
    output: OutputOption = None,
) -> None:
    """Check the graph, revision files, version tables, applied checksums and lint.

    Exits 1 on errors (0 with warnings only, unless --strict), 2 for a cycle or a missing
    revision. SVC may be a file: the service holding it is checked (pre-commit).

    Example: python manage.py validate users --format sarif -o validate.sarif
    """
    from .. import commands
    g = globals_of(ctx)
    with exit_on_error():
        chosen = chosen_format(fmt, as_json)
        report = commands.validate(services or (), strict=strict, **g.where)
    print_findings(report, chosen, g.verbosity < 0, output, "validate")


def lint_cmd(
    ctx: typer.Context,
    services: Annotated[list[str] | None, typer.Argument(help="Services (default: all).")] = None,
    as_json: JsonOption = False,
    strict: Annotated[bool, typer.Option("--strict", help="Warnings fail too.")] = False,
    fmt: FormatOption = None,
    output: OutputOption = None,
) -> None:
    """Find dangerous operations in revisions' upgrade(), with file, line and reason.

    Silence one with a comment `# ncm: allow <rule>` on its line or the line above.
    SVC may be a file: the service holding it is linted (pre-commit).

    Example: python manage.py lint billing --format github
    """
    from .. import commands
    g = globals_of(ctx)
    with exit_on_error():
        chosen = chosen_format(fmt, as_json)
        report = commands.lint(services or (), strict=strict, **g.where)
    print_findings(report, chosen, g.verbosity < 0, output, "lint")


def check_cmd(
    ctx: typer.Context,
    services: Annotated[
        list[str] | None, typer.Argument(help="Services for --drift and --roundtrip (default: all).")
    ] = None,
    as_json: JsonOption = False,
    strict: Annotated[bool, typer.Option("--strict", help="Warnings fail too.")] = False,
    fmt: FormatOption = None,
    output: OutputOption = None,
    changed_since: Annotated[
        str | None,
        typer.Option("--changed-since", metavar="REF",
                     help="Only services changed since this git commit, and their dependents."),
    ] = None,
    drift: Annotated[
        bool, typer.Option("--drift", help="Also compare live schemas with the applied revisions.")
    ] = False,
    roundtrip: Annotated[bool, typer.Option(
        "--roundtrip", help="Also run every revision up, down and up on a scratch database.")] = False,
) -> None:
    """For CI: validate everything, and fail when a revision is pending or a service dirty.

    With --changed-since REF, only the services changed since REF (git) and those that
    depend on them. --drift adds `drift`; --roundtrip checks that each revision's downgrade
    restores the schema before it (on a scratch database, never yours).

    Example: python manage.py check --env test --changed-since origin/main --format github
    """
    from .. import commands
    g = globals_of(ctx)
    with exit_on_error():
        chosen = chosen_format(fmt, as_json)
        report = commands.check(services or (), strict=strict, changed_since=changed_since,
                                drift=drift, roundtrip=roundtrip, **g.where)
    print_findings(report, chosen, g.verbosity < 0, output, "check")


def drift_cmd(
    ctx: typer.Context,
    services: Annotated[list[str] | None, typer.Argument(help="Services (default: all).")] = None,
    as_json: JsonOption = False,
    fmt: FormatOption = None,
    output: OutputOption = None,
) -> None:
    """Compare each live database with the schema its applied revisions give; exit 1 on drift.

    The expected schema is built on a scratch database (always dropped); the live one is
    only read. Tables, columns, types, nullability, defaults, indexes and constraints
    (MongoDB: collections, indexes, validators).

    Example: python manage.py drift users --env staging --json
    """
    from .. import commands
    g = globals_of(ctx)
    with exit_on_error():
        chosen = chosen_format(fmt, as_json)
        report = commands.drift(services or (), **g.where)
    print_findings(report, chosen, g.verbosity < 0, output, "drift")
