"""Printing: the two consoles, errors as one sentence and an exit code, JSON, plans,
progress, run summaries and findings.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields, is_dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import BadInput, Interrupted, NcmError, signal_name
from ..events import Event, RunReport
from ..findings import Report
from ..model import Plan, StepResult
from ..reporting import Format, render
from ..urls import redact_known

out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)


err = Console(stderr=True, highlight=False, soft_wrap=True)


@contextmanager
def exit_on_error() -> Iterator[None]:
    """Turn an `NcmError` into one sentence on stderr and its exit code."""
    try:
        yield
    except NcmError as exc:
        err.print(f"Error: {redact_known(str(exc))}", markup=False)
        raise typer.Exit(exc.exit_code) from None


def print_json(value: Any) -> None:
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


def write_plain(lines: list[str]) -> None:
    """Plain lines at once, past Rich: rendering thousands of lines costs it ~0.1 s, and
    these have neither markup nor anything to wrap."""
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    sys.stdout.flush()


class ProgressReporter:
    """Progress of a run. On a terminal: an overall bar and one per service, and each
    revision's time. Elsewhere (CI, Docker logs): one plain line per step with time,
    service, direction, revision, outcome and duration. Quiet: nothing."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.progress: Progress | None = None
        self.overall: TaskID | None = None
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> ProgressReporter:
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
                write_plain([f"{stamp} {r.service} {arrow} {r.revision} {r.outcome} "
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


def print_plan(plan: Plan) -> None:
    if not plan.steps:
        out.print("Nothing to do now." if plan.deferred
                  else "Nothing to do: every service is at its target.")
    for n, s in enumerate(plan.steps, 1):
        arrow = "up  " if s.direction == "up" else "down"
        out.print(f"{n:>4}. [level {s.level}] {arrow} {s.service}:{s.revision}", markup=False)
    print_deferred(plan)


def print_deferred(plan: Plan) -> None:
    """The steps held back for a maintenance window, and why."""
    if plan.deferred:
        out.print("Deferred to a maintenance window:")
        for d in plan.deferred:
            out.print(f"      {d.service}:{d.revision}  ({d.reason})", markup=False)


def show_cascade(plan: Plan) -> None:
    """--cascade shows what it will roll back, in order, before it starts."""
    if any(s.direction == "down" for s in plan.steps):
        out.print("Rolling back, in this order:")
        print_plan(plan)


def print_summary(report: RunReport) -> None:
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


def where_each_stands(error: NcmError) -> None:
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
    write_plain(lines)
    dirty = list(dict.fromkeys(r.service for r in error.results if r.dirty))
    if dirty:
        out.print(f"Run the same command again once {', '.join(dirty)} "
                  f"{'is' if len(dirty) == 1 else 'are'} repaired.", markup=False)
    elif isinstance(error, Interrupted):
        out.print("Run the same command again to continue.", markup=False)


class OutputFormat(StrEnum):
    """`--format` of validate, lint and check (`reporting.FORMATS`)."""

    text = "text"
    json = "json"
    github = "github"
    sarif = "sarif"
    junit = "junit"


def chosen_format(fmt: OutputFormat | None, as_json: bool) -> Format:
    """`--format`, with `--json` as `--format json`; both, disagreeing, is bad input."""
    if as_json and fmt not in (None, OutputFormat.json):
        raise BadInput(f"Give --json or --format {fmt.value if fmt else ''}, not both.")
    return "json" if as_json else (fmt or OutputFormat.text).value


def print_findings(report: Report, fmt: Format, quiet: bool, output: Path | None = None,
                   command: str = "check") -> None:
    """Print a report's findings in `fmt` (or write them to `output`) and exit with its code."""
    if output is not None:
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(render(report, fmt, command), encoding="utf-8")
        except OSError as exc:
            err.print(f"Error: cannot write {output}: {exc.strerror or exc}.", markup=False)
            raise typer.Exit(2) from None
        if not quiet:
            err.print(f"{report.summary()}; {fmt} report written to {output}", markup=False)
    elif fmt != "text":
        sys.stdout.write(render(report, fmt, command))
        sys.stdout.flush()
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


def shown(path: Path) -> str:
    """A path relative to the current folder when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
