"""The JSON-lines audit log: one line per step that changed (or tried to change) a database.

Each line says when, where, who, which service and revision, which way, the outcome and
how long it took, with the tool's version and the repository's git commit. Texts are
redacted, so a password never reaches the file.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .events import Event, Reporter
from .ledger import run_context, utcnow
from .model import RunContext
from .urls import redact_known

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit log."""

    time: str
    command: str
    run_id: str
    environment: str
    service: str
    revision: str | None
    direction: str | None
    outcome: str
    duration_ms: float | None
    actor: str
    host: str
    tool_version: str
    git_commit: str | None
    detail: str | None = None


@cache
def git_commit(root: Path) -> str | None:
    """The commit checked out in `root`'s repository, or None outside one (or without git)."""
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = proc.stdout.strip()
    return commit if proc.returncode == 0 and commit else None


class AuditLog:
    """Appends entries for one command run; a log with no path writes nothing."""

    def __init__(self, path: Path | None, root: Path, command: str, ctx: RunContext) -> None:
        self.path = path
        self.root = root
        self.command = command
        self.ctx = ctx
        self._fd: int | None = None  # while `held_open`: one open for a run's many lines

    @classmethod
    def open(cls, path: Path | None, root: Path, command: str, environment: str) -> AuditLog:
        return cls(path, root, command, run_context(environment))

    def record(
        self,
        service: str,
        outcome: str,
        *,
        revision: str | None = None,
        direction: str | None = None,
        duration_ms: float | None = None,
        detail: str | None = None,
    ) -> None:
        if self.path is None:
            return
        entry = AuditEntry(
            time=utcnow().isoformat(timespec="milliseconds"),
            command=self.command,
            run_id=self.ctx.run_id,
            environment=self.ctx.environment,
            service=service,
            revision=revision,
            direction=direction,
            outcome=outcome,
            duration_ms=round(duration_ms, 3) if duration_ms is not None else None,
            actor=self.ctx.actor,
            host=self.ctx.host,
            tool_version=self.ctx.tool_version,
            git_commit=git_commit(self.root),
            detail=redact_known(detail) if detail else None,
        )
        line = redact_known(json.dumps(vars(entry), sort_keys=False)) + "\n"
        # One write of one line with O_APPEND: concurrent runners never interleave lines.
        if self._fd is not None:
            os.write(self._fd, line.encode("utf-8"))
            return
        fd = self._open(self.path)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)

    @staticmethod
    def _open(path: Path) -> int:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    @contextmanager
    def held_open(self) -> Iterator[None]:
        """Keep the file open for a run's lines (opening it per line cost more than the
        line itself); each line is still one O_APPEND write. A file that cannot be opened
        here is left to each `record` to try, and to report, as without this."""
        if self.path is None or self._fd is not None:
            yield
            return
        try:
            self._fd = self._open(self.path)
        except OSError:
            yield
            return
        try:
            yield
        finally:
            fd, self._fd = self._fd, None
            os.close(fd)

    def reporter(self, inner: Reporter) -> Reporter:
        """`inner`, with every finished step also written to the audit log."""

        def report(event: Event) -> None:
            if event.kind == "done" and event.result is not None:
                r = event.result
                try:
                    self.record(r.service, r.outcome, revision=r.revision, direction=r.direction,
                                duration_ms=r.duration_ms, detail=r.error)
                except OSError as exc:
                    log.error("could not write the audit log %s: %s", self.path, exc)
            inner(event)

        return report


def read_entries(path: Path) -> list[AuditEntry]:
    """Every entry of an audit log file, oldest first."""
    if not path.is_file():
        return []
    return [AuditEntry(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
