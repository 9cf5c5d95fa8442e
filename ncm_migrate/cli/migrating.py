"""`migrate`, `rollback` and `sqlmigrate`: running a plan, with progress and a summary."""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import BadInput, Interrupted, NcmError, ProblemsFound, RevisionsDeferred, signal_name
from ..events import RunReport
from ..interrupts import StopRequest, ignore_signals, stopping_on_signals
from ..model import Phase, StepResult
from ..urls import redact_known
from .context import Globals, globals_of, terminal_questioner
from .output import (
    ProgressReporter,
    exit_on_error,
    out,
    print_deferred,
    print_json,
    print_plan,
    print_summary,
    show_cascade,
    where_each_stands,
)

if TYPE_CHECKING:
    from ..running import MigrateResult


def _run(call: Callable[[], MigrateResult], as_json: bool, quiet: bool) -> None:
    """Run migrate/rollback, then print each step's outcome as a summary or JSON, also
    when an error stopped the run (the error then says why, and sets the exit code).

    Ctrl-C or SIGTERM stops the run once; a second one while it records where it stopped,
    or while this prints, is only noted, and after that ignored until the process exits."""
    stop = StopRequest()
    try:
        with stopping_on_signals() as stop:
            _run_and_print(call, as_json, quiet, stop)
    finally:
        if stop.signum is not None:
            ignore_signals()


def _run_and_print(
    call: Callable[[], MigrateResult], as_json: bool, quiet: bool, stop: StopRequest
) -> None:
    try:
        result = call()
    except KeyboardInterrupt:  # before the run began: planning, a prompt, a backup
        signum = stop.signum or signal.SIGINT
        raise Interrupted(f"Interrupted ({signal_name(signum)}) before any revision ran.",
                          signum) from None
    except NcmError as exc:
        deferred = exc.deferred if isinstance(exc, RevisionsDeferred) else []
        if as_json:
            print_json({"ok": False, "error": redact_known(str(exc)), "steps": exc.results,
                        "run_id": exc.run_id, "deferred": deferred})
        elif not quiet and exc.results:
            print_summary(RunReport(exc.results))
            if isinstance(exc, Interrupted) or any(r.dirty for r in exc.results):
                where_each_stands(exc)
            _print_run_id(exc.run_id, exc.results)
        raise
    if as_json:
        print_json({"ok": True, "error": None, "steps": result.results, "run_id": result.run_id,
                    "reverted_run": result.undid_run, "deferred": result.plan.deferred})
    elif not quiet:
        if not result.plan.steps and not result.plan.deferred:
            out.print("Nothing to do: " + (f"run {result.undid_run} left nothing applied to revert."
                                           if result.undid_run else "every service is at its target."))
        print_summary(result.report)
        if result.undid_run and result.plan.steps:
            out.print(f"Reverted what run {result.undid_run} applied.", markup=False)
        print_deferred(result.plan)
        _print_run_id(result.run_id, result.results)


def _print_run_id(run_id: str | None, results: list[StepResult]) -> None:
    """The run's id after its summary, and how to undo what it applied."""
    if run_id is None or not results:
        return
    undo = (f" (undo what it applied: `manage.py rollback --run {run_id}`)"
            if any(r.outcome == "applied" for r in results) else "")
    out.print(f"Run {run_id}{undo}.", markup=False)


def migrate_cmd(
    ctx: typer.Context,
    service: Annotated[str | None, typer.Argument(help="One service (default: all).")] = None,
    target: Annotated[str | None, typer.Argument(help="Revision, head, or zero.")] = None,
    plan: Annotated[bool, typer.Option("--plan", help="Show the steps; change nothing.")] = False,
    fake: Annotated[bool, typer.Option("--fake", help="Record steps without running them.")] = False,
    sql: Annotated[bool, typer.Option("--sql", help="Print the SQL instead of running it.")] = False,
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", min=1, help="Services at once.")] = None,
    cascade: Annotated[
        bool, typer.Option("--cascade", help="Backwards: roll back dependents first.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Confirm destructive work.")] = False,
    rollback_on_failure: Annotated[
        bool,
        typer.Option("--rollback-on-failure",
                     help="On a failure, roll back everything this run applied (default: the "
                          "rollback_on_failure setting; --no-rollback-on-failure turns it off)."),
    ] = False,
    # Its own hidden option, not a flag pair: the pair's column squeezed the help to a few
    # words a line on an 80-column terminal.
    no_rollback_on_failure: Annotated[
        bool, typer.Option("--no-rollback-on-failure", hidden=True)
    ] = False,
    verify_only: Annotated[
        bool, typer.Option("--verify-only", help="Re-run applied revisions' verify(); change nothing.")
    ] = False,
    phase: Annotated[
        Phase | None,
        typer.Option("--phase", help="pre: before the deploy (expand); post: after it (contract)."),
    ] = None,
    now: Annotated[
        bool, typer.Option("--now", help="Run what waits for a maintenance window anyway.")
    ] = False,
    allow_deferred: Annotated[
        bool, typer.Option("--allow-deferred", help="Exit 0 when revisions wait for a window.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    changed_since: Annotated[
        str | None,
        typer.Option("--changed-since", metavar="REF",
                     help="With --plan: only services changed since this git commit, and "
                          "their dependents."),
    ] = None,
) -> None:
    """Apply every pending revision of every service, in dependency order.

    With SVC TARGET, move one service to a revision, forwards or backwards (zero = base).
    Outside the environment's maintenance windows, destructive revisions are deferred.

    Example: python manage.py migrate --env staging --jobs 4
    """
    from .. import commands
    g = globals_of(ctx)
    services = [service] if service else []
    with exit_on_error():
        if rollback_on_failure and no_rollback_on_failure:
            raise BadInput("Give --rollback-on-failure or --no-rollback-on-failure, not both.")
        undo = True if rollback_on_failure else False if no_rollback_on_failure else None
        if changed_since is not None and not plan:
            raise BadInput("--changed-since works with --plan (it shows what a change would "
                           "migrate); migrate itself runs what is pending.")
        if plan:
            steps = commands.plan(services, target, cascade=cascade, changed_since=changed_since,
                                  phase=phase, now=now, **g.where)
            if as_json:
                print_json({"steps": [asdict(s) for s in steps.steps],
                            "deferred": [asdict(d) for d in steps.deferred]})
            else:
                print_plan(steps)
            return
        if sql:
            script = commands.migrate_sql(services, target, phase=phase, **g.where)
            print(script.text)
            if script.unrendered:
                raise NcmError(
                    "These revisions need a live database and are not in the SQL above: "
                    + ", ".join(script.unrendered) + "."
                )
            return
        if verify_only:
            _verify_only(services, as_json, g)
            return
        with ProgressReporter(quiet=as_json or g.verbosity < 0) as reporter:
            _run(lambda: commands.migrate(
                services, target, fake=fake, jobs=jobs, cascade=cascade, report=reporter,
                confirm=show_cascade if cascade and not as_json else None,
                questioner=terminal_questioner(yes), rollback_on_failure=undo, phase=phase,
                now=now, allow_deferred=allow_deferred, **g.where,
            ), as_json, g.verbosity < 0)


def _verify_only(services: list[str], as_json: bool, g: Globals) -> None:
    from .. import commands
    found = commands.verify(services, **g.where)
    failed = [v for v in found if not v.ok]
    if as_json:
        print_json({"ok": not failed, "verified": found})
    elif g.verbosity >= 0:
        for v in found:
            mark = "ok" if v.ok else f"FAILED: {v.error}"
            out.print(f"{v.service}:{v.revision} verify {mark}", markup=False)
        if not found:
            out.print("No applied revision defines verify().")
    if failed:
        raise ProblemsFound(
            "verify() failed for " + ", ".join(f"{v.service}:{v.revision}" for v in failed) + "."
        )


def rollback_cmd(
    ctx: typer.Context,
    service: Annotated[
        str | None, typer.Argument(help="The service to move backwards (with --run: only its part).")
    ] = None,
    target: Annotated[str | None, typer.Argument(help="Revision to keep, or zero.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", "-n", min=1, help="Revisions to revert.")] = None,
    run: Annotated[
        str | None, typer.Option("--run", metavar="ID", help="Revert what run ID applied.")
    ] = None,
    last_run: Annotated[
        bool, typer.Option("--last-run", help="Revert what the newest run applied.")
    ] = False,
    cascade: Annotated[bool, typer.Option("--cascade", help="Roll back dependents first.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Confirm destructive work.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Revert a service's latest revision, or back to TARGET; or what one run applied.

    --run ID (from migrate's summary, --json or history) or --last-run reverts what that
    run applied, across services, newest first. Refused while other services' applied
    revisions still require what it would remove, unless --cascade rolls those back first.

    Example: python manage.py rollback billing --steps 2
    """
    from .. import commands
    g = globals_of(ctx)
    with exit_on_error(), ProgressReporter(quiet=as_json or g.verbosity < 0) as reporter:
        _run(lambda: commands.rollback(
            service, target, steps=steps, run=run, last_run=last_run, cascade=cascade, report=reporter,
            confirm=show_cascade if cascade and not as_json else None,
            questioner=terminal_questioner(yes), **g.where,
        ), as_json, g.verbosity < 0)


def sqlmigrate_cmd(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="The service.")],
    revision: Annotated[str, typer.Argument(help="Revision id or unique prefix.")],
    backwards: Annotated[bool, typer.Option("--backwards", help="The downgrade's SQL.")] = False,
) -> None:
    """Print the SQL a revision runs, without a database (Alembic's offline mode).

    Example: python manage.py sqlmigrate users 0002
    """
    from .. import commands
    with exit_on_error():
        print(commands.sqlmigrate(service, revision, backwards=backwards, **globals_of(ctx).where))
