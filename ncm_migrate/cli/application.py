"""The command line: the only module that imports Typer, prints, or exits.

Every command parses its options, calls a verb from `commands`, and prints the result;
an `NcmError` becomes one sentence on stderr and its exit code.
"""

from __future__ import annotations

import gc
import inspect
import json
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from .. import commands
from ..errors import BadInput, Interrupted, NcmError, ProblemsFound, signal_name
from ..events import Event, RunReport
from ..findings import Report
from ..interrupts import StopRequest, ignore_signals, stopping_on_signals
from ..ledger import tool_version
from ..loader import find_root
from ..logs import configure_logging, redact_tracebacks, redacted_traceback, verbosity_levels
from ..model import Plan, StepResult
from ..questioner import Questioner, questioner_for
from ..running import MigrateResult
from ..service_commands import ServiceCommand, find_service_commands, load_service_command
from ..urls import redact_known

app = typer.Typer(
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
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)


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


@app.callback(invoke_without_command=True)
def _options(
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


@contextmanager
def _errors() -> Iterator[None]:
    """Turn an `NcmError` into one sentence on stderr and its exit code."""
    try:
        yield
    except NcmError as exc:
        err.print(f"Error: {redact_known(str(exc))}", markup=False)
        raise typer.Exit(exc.exit_code) from None


def _json(value: Any) -> None:
    def plain(v: Any) -> Any:
        if is_dataclass(v) and not isinstance(v, type):
            # By fields, not asdict: asdict deep-copies every value first (5,000 revisions
            # of showmigrations --json made that a tenth of a second).
            return {f.name: plain(getattr(v, f.name)) for f in fields(v)}
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    print(redact_known(json.dumps(plain(value), indent=2, default=str)))


def _write_plain(lines: list[str]) -> None:
    """Plain lines at once, past Rich: rendering thousands of lines costs it ~0.1 s, and
    these have neither markup nor anything to wrap."""
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    sys.stdout.flush()


def _g(ctx: typer.Context) -> Globals:
    g = ctx.obj
    assert isinstance(g, Globals)
    return g


# -- services, showmigrations --------------------------------------------------------


@app.command("services")
def services_cmd(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the services found, their backend, masked URL and dependencies.

    Example: python manage.py services --env staging --json
    """
    with _errors():
        found = commands.services(**_g(ctx).where)
        if as_json:
            _json([{k: v for k, v in asdict(s).items() if k != "skip_reason"} for s in found])
            return
        table = Table("service", "backend", "url", "version table", "depends on", box=None)
        for s in found:
            url = s.url if s.skip_reason is None else f"(skipped: {s.skip_reason})"
            version_table = "-" if s.backend == "mongo" else s.version_table  # MongoDB: the ledger
            table.add_row(s.name, s.backend, url, version_table, ", ".join(s.depends_on))
        out.print(table)


@app.command("showmigrations")
def showmigrations_cmd(
    ctx: typer.Context,
    services: Annotated[list[str] | None, typer.Argument(help="Services (default: all).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show every revision, [X] applied or [ ] pending, in the order they run.

    With pending counts, dirty marks and forked heads; --json adds each service's heads and
    current revisions.

    Example: python manage.py showmigrations users billing
    """
    with _errors():
        found = commands.showmigrations(services or (), **_g(ctx).where)
        if as_json:
            _json({"services": [
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
                lines.append(f" [{mark}] {r.revision}{doc}")
            if s.unknown:
                lines.append(f" applied but not on disk: {', '.join(s.unknown)} (check out the "
                             "branch that has them)")
            if not s.revisions:
                lines.append(" (no migrations)")
            if s.conflicting_heads:
                lines.append(f" several heads: {', '.join(s.conflicting_heads)} "
                             f"(run makemigrations {s.name} --merge)")
            elif s.pending:
                lines.append(f" {s.pending} pending")
        _write_plain(lines)


app.command(
    "status",
    help="Alias of showmigrations: [X] applied or [ ] pending per revision.\n\n"
    "Example: python manage.py status users --json",
)(showmigrations_cmd)


# -- migrate, rollback -----------------------------------------------------------------


class _Reporter:
    """Progress of a run. On a terminal: an overall bar and one per service, and each
    revision's time. Elsewhere (CI, Docker logs): one plain line per step with time,
    service, direction, revision, outcome and duration. Quiet: nothing."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.progress: Progress | None = None
        self.overall: TaskID | None = None
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> _Reporter:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, event: Event) -> None:
        if self.quiet:
            return
        if event.kind == "plan" and event.plan is not None:
            if out.is_terminal and event.plan.steps:
                self._start(event.plan)
            return
        step, r = event.step, event.result
        if step is None:
            return
        if self.progress is None:
            if r is not None:
                # Past Rich, as each step finishes: these lines have neither markup nor
                # anything to wrap, and Rich's print cost more than the step's ledger row.
                stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                arrow = "up  " if r.direction == "up" else "down"
                _write_plain([f"{stamp} {r.service} {arrow} {r.revision} {r.outcome} "
                              f"{r.duration_ms:.0f}ms"])
            return
        task = self.tasks.get(step.service)
        if r is None:
            if task is not None:
                self.progress.update(task, description=f"  {step.service}: {step.revision}")
            return
        mark = {"applied": "[green]✓", "reverted": "[yellow]↩", "faked": "[blue]~",
                "skipped": "[dim]-", "failed": "[red]✗"}.get(r.outcome, "·")
        self.progress.console.print(
            f"{mark}[/] {r.service} {r.direction} {r.revision} [dim]{r.outcome} "
            f"{r.duration_ms:.0f}ms[/]"
        )
        if self.overall is not None:
            self.progress.advance(self.overall)
        if task is not None:
            self.progress.advance(task)

    def _start(self, plan: Plan) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=out, transient=True,
        )
        self.overall = self.progress.add_task("all services", total=len(plan.steps))
        for service in plan.services():
            count = sum(1 for s in plan.steps if s.service == service)
            self.tasks[service] = self.progress.add_task(f"  {service}", total=count)
        self.progress.start()


def _print_plan(plan: Plan) -> None:
    if not plan.steps:
        out.print("Nothing to do: every service is at its target.")
        return
    for n, s in enumerate(plan.steps, 1):
        arrow = "up  " if s.direction == "up" else "down"
        out.print(f"{n:>4}. [level {s.level}] {arrow} {s.service}:{s.revision}", markup=False)


def _show_cascade(plan: Plan) -> None:
    """--cascade shows what it will roll back, in order, before it starts."""
    if any(s.direction == "down" for s in plan.steps):
        out.print("Rolling back, in this order:")
        _print_plan(plan)


def _summary(report: RunReport) -> None:
    counts: dict[str, dict[str, int]] = {}
    for r in report.results:
        row = counts.setdefault(r.service, {})
        row[r.outcome] = row.get(r.outcome, 0) + 1
    if not counts:
        return
    outcomes = ["applied", "reverted", "faked", "skipped", "failed", "not-run"]
    table = Table("service", *outcomes, title="Summary", box=None)
    total = dict.fromkeys(outcomes, 0)
    for service, row in counts.items():
        table.add_row(service, *(str(row.get(o, 0)) for o in outcomes))
        for o in outcomes:
            total[o] += row.get(o, 0)
    table.add_row("total", *(str(total[o]) for o in outcomes))
    out.print(table)


def _where_each_stands(error: NcmError) -> None:
    """After a run that was interrupted or left a service dirty: each service's state, and
    what to run next."""
    by_service: dict[str, list[StepResult]] = {}
    for r in error.results:
        by_service.setdefault(r.service, []).append(r)
    lines = []
    for service, results in by_service.items():
        parts = []
        for outcome in ("applied", "reverted", "faked"):
            done = [r.revision for r in results if r.outcome == outcome]
            if done:
                parts.append(f"{outcome}: {', '.join(done)}")
        for r in results:
            if r.outcome != "failed":
                continue
            what = "interrupted" if isinstance(error, Interrupted) else "failed"
            if r.dirty:
                parts.append(f"{r.revision} {what} part way: DIRTY, its database cannot roll DDL "
                             f"back; check what of it ran, then run `manage.py repair {service}`")
            else:
                parts.append(f"{r.revision} {what} and rolled back: nothing of it remains")
        waiting = [r.revision for r in results if r.outcome == "not-run"]
        if waiting:
            parts.append(f"not run: {', '.join(waiting)}")
        lines.append(f"  {service}: {'; '.join(parts) or 'nothing to do'}")
    if isinstance(error, Interrupted):
        out.print(f"Interrupted by {signal_name(error.signum)}. Where each service stands:",
                  markup=False)
    else:
        out.print("Where each service stands:", markup=False)
    _write_plain(lines)
    dirty = list(dict.fromkeys(r.service for r in error.results if r.dirty))
    if dirty:
        out.print(f"Run the same command again once {', '.join(dirty)} "
                  f"{'is' if len(dirty) == 1 else 'are'} repaired.", markup=False)
    elif isinstance(error, Interrupted):
        out.print("Run the same command again to continue.", markup=False)


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
        if as_json:
            _json({"ok": False, "error": redact_known(str(exc)), "steps": exc.results})
        elif not quiet and exc.results:
            _summary(RunReport(exc.results))
            if isinstance(exc, Interrupted) or any(r.dirty for r in exc.results):
                _where_each_stands(exc)
        raise
    if as_json:
        _json({"ok": True, "error": None, "steps": result.results})
    elif not quiet:
        if not result.plan.steps:
            out.print("Nothing to do: every service is at its target.")
        _summary(result.report)


@app.command("migrate")
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
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Apply every pending revision of every service, in dependency order.

    With SVC TARGET, move one service to a revision, forwards or backwards (zero = base).

    Example: python manage.py migrate --env staging --jobs 4
    """
    g = _g(ctx)
    services = [service] if service else []
    with _errors():
        if rollback_on_failure and no_rollback_on_failure:
            raise BadInput("Give --rollback-on-failure or --no-rollback-on-failure, not both.")
        undo = True if rollback_on_failure else False if no_rollback_on_failure else None
        if plan:
            steps = commands.plan(services, target, cascade=cascade, **g.where)
            if as_json:
                _json({"steps": [asdict(s) for s in steps.steps]})
            else:
                _print_plan(steps)
            return
        if sql:
            script = commands.migrate_sql(services, target, **g.where)
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
        with _Reporter(quiet=as_json or g.verbosity < 0) as reporter:
            _run(lambda: commands.migrate(
                services, target, fake=fake, jobs=jobs, cascade=cascade, report=reporter,
                confirm=_show_cascade if cascade and not as_json else None,
                questioner=_questioner(yes), rollback_on_failure=undo, **g.where,
            ), as_json, g.verbosity < 0)


def _verify_only(services: list[str], as_json: bool, g: Globals) -> None:
    found = commands.verify(services, **g.where)
    failed = [v for v in found if not v.ok]
    if as_json:
        _json({"ok": not failed, "verified": found})
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


@app.command("rollback")
def rollback_cmd(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="The service to move backwards.")],
    target: Annotated[str | None, typer.Argument(help="Revision to keep, or zero.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", "-n", min=1, help="Revisions to revert.")] = None,
    cascade: Annotated[bool, typer.Option("--cascade", help="Roll back dependents first.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Confirm destructive work.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Revert a service's latest revision, or back to TARGET.

    Refused while other services' applied revisions still require what it would remove,
    unless --cascade rolls those back first.

    Example: python manage.py rollback billing --steps 2
    """
    g = _g(ctx)
    with _errors(), _Reporter(quiet=as_json or g.verbosity < 0) as reporter:
        _run(lambda: commands.rollback(
            service, target, steps=steps, cascade=cascade, report=reporter,
            confirm=_show_cascade if cascade and not as_json else None,
            questioner=_questioner(yes), **g.where,
        ), as_json, g.verbosity < 0)


@app.command("sqlmigrate")
def sqlmigrate_cmd(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="The service.")],
    revision: Annotated[str, typer.Argument(help="Revision id or unique prefix.")],
    backwards: Annotated[bool, typer.Option("--backwards", help="The downgrade's SQL.")] = False,
) -> None:
    """Print the SQL a revision runs, without a database (Alembic's offline mode).

    Example: python manage.py sqlmigrate users 0002
    """
    with _errors():
        print(commands.sqlmigrate(service, revision, backwards=backwards, **_g(ctx).where))


@app.command("history")
def history_cmd(
    ctx: typer.Context,
    service: Annotated[str | None, typer.Argument(help="One service (default: all).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Latest N rows.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show the ledger: who applied what, when, how long, and the outcome.

    Example: python manage.py history users --limit 20
    """
    with _errors():
        rows = commands.history([service] if service else [], limit=limit, **_g(ctx).where)
        if as_json:
            _json(rows)
            return
        table = Table("started", "service", "revision", "dir", "status", "ms", "actor",
                      "host", "env", box=None)
        for r in rows:
            table.add_row(r.started_at[:19], r.service, r.revision, r.direction, r.status,
                          f"{r.duration_ms or 0:.0f}", r.actor, r.host, r.environment)
        out.print(table)


@app.command("wait")
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
    with _errors():
        took = commands.wait(services or (), timeout=timeout, **_g(ctx).where)
        if _g(ctx).verbosity >= 0:
            for name, seconds in took.items():
                out.print(f"{name}: up ({seconds:.1f}s)", markup=False)


@app.command("doctor")
def doctor_cmd(
    ctx: typer.Context,
    services: Annotated[list[str] | None, typer.Argument(help="Services (default: all).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Per service: reachable, latency, server version, privileges, heads, pending, lock.

    Exits 1 when a database is unreachable or a revision file cannot be read.

    Example: python manage.py doctor --env staging --json
    """
    with _errors():
        found = commands.doctor(services or (), **_g(ctx).where)
        if as_json:
            _json([{**asdict(d), "details": dict(d.details)} for d in found])
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
        if any(d.error for d in found):
            raise typer.Exit(1)


# -- validate, lint, check, repair, backup, restore -----------------------------------


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


def _questioner(yes: bool) -> Questioner:
    """Typed confirmation on a terminal; elsewhere only --yes confirms."""
    return questioner_for(yes, _interactive(), _prompt)


def _findings(report: Report, as_json: bool, quiet: bool) -> None:
    """Print a report's findings (JSON: `{ok, findings}`) and exit with its code."""
    if as_json:
        _json({"ok": report.ok, "findings": list(report.findings)})
    else:
        for f in report.findings:
            colour = "red" if f.severity == "error" else "yellow"
            where = f"{f.service}:{f.revision}" if f.revision else f.service
            out.print(f"[{colour}]{f.severity:<7}[/] {where} [bold]{f.rule}[/] {f.where()}")
            out.print(f"        {redact_known(f.message)}", markup=False)
        if not quiet:
            verdict = "OK" if report.ok else "FAILED"
            out.print(f"{verdict}: {report.summary()}", markup=False)
    if report.exit_code:
        raise typer.Exit(report.exit_code)


@app.command("validate")
def validate_cmd(
    ctx: typer.Context,
    services: Annotated[list[str] | None, typer.Argument(help="Services (default: all).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Warnings fail too.")] = False,
) -> None:
    """Check the graph, revision files, version tables, applied checksums and lint.

    Exits 1 on errors (0 with warnings only, unless --strict), 2 for a cycle or a missing
    revision.

    Example: python manage.py validate users --json
    """
    g = _g(ctx)
    with _errors():
        report = commands.validate(services or (), strict=strict, **g.where)
    _findings(report, as_json, g.verbosity < 0)


@app.command("lint")
def lint_cmd(
    ctx: typer.Context,
    services: Annotated[list[str] | None, typer.Argument(help="Services (default: all).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Warnings fail too.")] = False,
) -> None:
    """Find dangerous operations in revisions' upgrade(), with file, line and reason.

    Silence one with a comment `# ncm: allow <rule>` on its line or the line above.

    Example: python manage.py lint billing --env production
    """
    g = _g(ctx)
    with _errors():
        report = commands.lint(services or (), strict=strict, **g.where)
    _findings(report, as_json, g.verbosity < 0)


@app.command("check")
def check_cmd(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Warnings fail too.")] = False,
) -> None:
    """For CI: validate everything, and fail when a revision is pending or a service dirty.

    Example: python manage.py check --env test --json
    """
    g = _g(ctx)
    with _errors():
        report = commands.check(strict=strict, **g.where)
    _findings(report, as_json, g.verbosity < 0)


@app.command("repair")
def repair_cmd(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="The service to repair.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Confirm in a protected environment.")] = False,
) -> None:
    """After a manual fix: clear a failed (dirty) mark and re-record edited revisions' checksums.

    Example: python manage.py repair billing
    """
    with _errors():
        actions = commands.repair(service, questioner=_questioner(yes), **_g(ctx).where)
        if not actions:
            out.print(f"Nothing to repair in service '{service}': no dirty mark, and every applied "
                      "revision's file is as it was applied.", markup=False)
            return
        out.print(f"Repaired service '{service}' (only its ledger changed; no migration code ran "
                  "and no table was touched):", markup=False)
        for a in actions:
            out.print(f"  {service}:{a.revision}: {a.reason} (ledger row appended: {a.direction} "
                      f"{a.status}).", markup=False)


@app.command("backup")
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
    with _errors():
        folder, manifest = commands.backup(service, out_dir, **_g(ctx).where)
        lock = " (encrypted)" if manifest.encrypted else ""
        out.print(f"Backed up {service} ({manifest.dialect}, heads "
                  f"{', '.join(manifest.heads) or 'none'}) to {folder}{lock}", markup=False)


@app.command("restore")
def restore_cmd(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="The service to restore.")],
    folder: Annotated[Path, typer.Argument(help="A folder written by `backup`.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Confirm in a protected environment.")] = False,
) -> None:
    """Replace one service's database with a backup folder's contents.

    Example: python manage.py restore billing var/backups/production/billing/20250101T120000Z --yes
    """
    with _errors():
        manifest = commands.restore(service, folder, questioner=_questioner(yes), **_g(ctx).where)
        out.print(f"Restored {service} from {folder} (taken {manifest.time}, heads "
                  f"{', '.join(manifest.heads) or 'none'})", markup=False)


# -- makemigrations, startservice, init --------------------------------------------------


def _shown(path: Path) -> str:
    """A path relative to the current folder when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@app.command("makemigrations")
def makemigrations_cmd(
    ctx: typer.Context,
    services: Annotated[list[str] | None, typer.Argument(help="Services (default: all).")] = None,
    message: Annotated[
        str | None, typer.Option("-m", "--message", help="What it does; also names the file.")
    ] = None,
    migration_type: Annotated[
        str | None, typer.Option("--type", "-t", help="schema (default), data, index or seed.")
    ] = None,
    empty: Annotated[bool, typer.Option("--empty", help="The template only, no autogenerate.")] = False,
    requires: Annotated[
        list[str] | None, typer.Option("--requires", help="SVC:REV of another service it needs.")
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 naming services whose models changed.")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would be written.")] = False,
    merge: Annotated[bool, typer.Option("--merge", help="Merge SVC's conflicting heads.")] = False,
) -> None:
    """Write new revisions, autogenerated from models.py or from a template.

    Autogenerate compares models.py with a scratch database built by the service's own
    migrations, never with yours. --type picks the template: schema, data, index or seed.

    Example: python manage.py makemigrations users -m "add email"
    """
    g = _g(ctx)
    with _errors():
        result = commands.makemigrations(
            services or (), message=message, migration_type=migration_type, empty=empty,
            requires=requires or (), check=check, dry_run=dry_run, merge=merge, **g.where,
        )
        if g.verbosity < 0:  # -q: errors only (and, with --dry-run, the files it would write)
            for new in result.written if dry_run else ():
                out.print(new.text, markup=False)
            return
        if check:
            out.print("No changes detected: every service's models match its migrations.")
            return
        for new in result.written:
            note = " (dry run: nothing written)" if dry_run else ""
            out.print(f"Migrations for '{new.service}'{note}:", markup=False)
            out.print(f"  {_shown(new.path)}", markup=False)
            if new.how:
                out.print(f"    {new.how[0].upper()}{new.how[1:]}.", markup=False)
            for change in new.changes:
                out.print(f"    - {change}", markup=False)
            if dry_run:
                out.print(new.text, markup=False)
        for name in result.unchanged:
            what = "No conflicts detected to merge" if merge else "No changes detected"
            out.print(f"{what} in {name}", markup=False)
        for name, reason in result.skipped:
            out.print(f"Skipped {name}: {reason}", markup=False)


@app.command("startservice")
def startservice_cmd(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(help="The new service's name: lower case, digits and _ (\\[a-z]\\[a-z0-9_]*).")
    ],
    backend: Annotated[
        str | None, typer.Option("--backend", help="sql or mongo (default: from the URL, else sql).")
    ] = None,
    database_url: Annotated[
        str | None, typer.Option("--database-url", help="Its URL in this environment (no password).")
    ] = None,
) -> None:
    """Scaffold a new service: migrations/, models.py (SQL) and its settings.toml.

    Example: python manage.py startservice billing --database-url postgresql+psycopg://app@db/billing
    """
    with _errors():
        new = commands.startservice(name, backend=backend, database_url=database_url, **_g(ctx).where)
        out.print(f"Created service '{name}':", markup=False)
        for path in new.paths:
            out.print(f"  {_shown(path)}", markup=False)
        where = _shown(new.settings_file)
        then = ""
        if new.written_url:
            out.print(f"Database in '{new.env}': {new.written_url} (written to {where}).", markup=False)
        elif new.url:
            out.print(f"Database in '{new.env}': {new.url} (from the settings).", markup=False)
        else:
            out.print(
                f"No database URL written: set database_url under [{new.env}] in {where} (a password "
                f"in settings/.secrets.toml or NCM_SERVICES__{name.upper()}__DATABASE_URL); until "
                f"then commands leave '{name}' out.", markup=False)
            then = "set its database_url, then "
        models = next((p for p in new.paths if p.name == "models.py"), None)
        if models is None:
            out.print(f"Next: {then}`python manage.py makemigrations {name} --empty -m \"...\"`.",
                      markup=False)
            return
        out.print(f"Next: {then}declare its tables in {_shown(models)} and run `python manage.py "
                  f"makemigrations {name}` (while it declares none, nothing is autogenerated or "
                  f"checked: write revisions by hand with `makemigrations {name} --empty`).",
                  markup=False)


@app.command("init")
def init_cmd(
    directory: Annotated[Path | None, typer.Argument(help="The repository (default: here).")] = None,
) -> None:
    """Scaffold manage.py, settings/ and services/ into a repository.

    Example: ncm-migrate init my-monorepo
    """
    with _errors():
        created = commands.init(directory)
        for path in created:
            out.print(f"Created {_shown(path)}", markup=False)
        where = ""
        if directory is not None and directory.resolve() != Path.cwd().resolve():
            where = f"cd {_shown(directory)} && "
        out.print(f"Next: {where}python manage.py startservice NAME", markup=False)


@app.command("help")
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
        with _errors():
            known = ", ".join(sorted(group.list_commands(parent)))
            raise BadInput(f"Unknown command '{command}'; commands: {known}.")
    assert found is not None
    if not found.get_params(parent) or ":" in command:
        # A service's command parses its own arguments, --help included.
        found.main(["--help"], prog_name=f"{parent.info_name or 'manage.py'} {command}")
        return
    found.make_context(command, ["--help"], parent=parent)


# -- service commands ----------------------------------------------------------------------


def _add_service_command(target: typer.Typer, command: ServiceCommand) -> None:
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
        with _errors():
            loaded = load_service_command(command)
        if isinstance(loaded, typer.Typer):
            sub = loaded
        else:
            sub = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
            sub.command(command.full_name, help=command.help or None)(loaded)
        parent = ctx.parent.info_name if ctx.parent and ctx.parent.info_name else "manage.py"
        sub(args=list(ctx.args), prog_name=f"{parent} {command.full_name}")


def _one_line_paragraphs(doc: str) -> str:
    """A docstring with each paragraph on one line: Rich wraps help text to the terminal but
    keeps the line breaks of the source, which left ragged lines at 80 columns."""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


for _info in app.registered_commands:
    if _info.help is None and _info.callback is not None and _info.callback.__doc__:
        _info.help = _one_line_paragraphs(_info.callback.__doc__)


def app_for(root: Path | None, argv: Sequence[str] = ()) -> typer.Typer:
    """The CLI for the monorepo at `root`: the built-in commands, plus its services'
    commands when `argv` may run or list one (no command, --help, or `svc:name`)."""
    word = _command_word(argv)
    if word is not None and ":" not in word and word not in ("-h", "--help", "help"):
        return app
    found = find_service_commands(root or find_root(), env=_option_value(argv, "--env"))
    if not found:
        return app
    full = typer.Typer(
        name=app.info.name, help=app.info.help, add_completion=False,
        context_settings={"help_option_names": ["-h", "--help"]}, pretty_exceptions_enable=False,
    )
    full.registered_callback = app.registered_callback
    full.registered_commands = list(app.registered_commands)
    full.registered_groups = list(app.registered_groups)
    for command in found:
        _add_service_command(full, command)
    return full


def _command_word(argv: Sequence[str]) -> str | None:
    """The first argument that is not a global option (or its value)."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _GLOBAL_VALUED:
            i += 2
            continue
        if arg in _GLOBAL_FLAGS or arg.split("=", 1)[0] in _GLOBAL_VALUED:
            i += 1
            continue
        return arg
    return None


def _option_value(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


_GLOBAL_FLAGS = {"-v", "-vv", "-vvv", "--verbose", "-q", "--quiet"}
_GLOBAL_VALUED = {"--env", "--settings"}


def hoist_global_options(argv: list[str]) -> list[str]:
    """Let `--env`, `--settings`, `-v` and `-q` follow the command too
    (`manage.py migrate --env staging`), by moving them in front of it."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg in _GLOBAL_FLAGS:
            front.append(arg)
        elif arg in _GLOBAL_VALUED and i + 1 < len(argv):
            front.extend(argv[i : i + 2])
            i += 1
        elif arg.split("=", 1)[0] in _GLOBAL_VALUED and "=" in arg:
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


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


__all__ = ["StepResult", "app", "app_for", "hoist_global_options", "main"]
