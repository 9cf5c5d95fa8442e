"""One root error for everything a user can cause; each leaf carries its exit code.

The CLI turns an `NcmError` into one sentence on stderr and `exit_code`; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import DeferredStep, StepResult


class NcmError(Exception):
    """Root of every error ncm-migrate raises on purpose.

    An error that stops a run carries every step's outcome in `results` (what was applied
    before it, what failed, what did not run, and what was rolled back afterwards).
    """

    exit_code = 1

    @property
    def results(self) -> list[StepResult]:
        found: list[StepResult] = self.__dict__.get("_results", [])
        return found

    @results.setter
    def results(self, value: list[StepResult]) -> None:
        self.__dict__["_results"] = list(value)

    @property
    def run_id(self) -> str | None:
        """The id of the run this error stopped (in the ledger and the audit log), if one began."""
        found: str | None = self.__dict__.get("_run_id")
        return found

    @run_id.setter
    def run_id(self, value: str | None) -> None:
        self.__dict__["_run_id"] = value

    def __reduce__(self) -> tuple[object, ...]:
        # Errors cross process boundaries (parallel runs); keep their data on the way.
        return (_rebuild, (type(self), str(self), dict(self.__dict__)))


def _rebuild(cls: type[NcmError], message: str, state: dict[str, object]) -> NcmError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class BadInput(NcmError):
    """The user asked for something that cannot be: exit 2."""

    exit_code = 2


class SettingsError(BadInput):
    """A setting is missing, malformed or unknown; names the key and where it came from."""


class UnknownEnvironment(SettingsError):
    def __init__(self, env: str, known: list[str], suggestion: str | None = None) -> None:
        self.env = env
        self.known = known
        hint = f" Did you mean '{suggestion}'?" if suggestion else ""
        super().__init__(
            f"Unknown environment '{env}'; known environments: {', '.join(known) or '(none)'}."
            + hint
        )


class UnknownService(BadInput):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        super().__init__(
            f"Unknown service '{name}'; services found: {', '.join(known) or '(none)'}."
        )


class ServiceNotConfigured(BadInput):
    """A service named on the command line has no database in this environment."""


class DriverMissing(BadInput):
    """A URL names a database driver that is not installed."""


class RevisionFileError(BadInput):
    """A revision file cannot be read: syntax error, missing header, duplicate id."""


class UnknownRevision(BadInput):
    """A revision named by the user or by a header does not exist."""


class GraphError(BadInput):
    """A cycle or a dependency that points nowhere."""


class ConfirmationRefused(BadInput):
    """Destructive work in a protected environment without confirmation."""


class MigrationFailed(NcmError):
    """A revision raised while it was applied or reverted."""

    def __init__(
        self,
        message: str,
        service: str = "",
        revision: str = "",
        results: list[StepResult] | None = None,
    ) -> None:
        self.service = service
        self.revision = revision
        self.results = list(results or [])
        super().__init__(message)


def signal_name(signum: int) -> str:
    """How messages name the signal that stopped a run: Ctrl-C for SIGINT, else its name."""
    if signum == signal.SIGINT:
        return "Ctrl-C"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Interrupted(NcmError):
    """The run was stopped by a signal: Ctrl-C (SIGINT, exit 130) or SIGTERM (exit 143).

    Raised after the interrupted step was recorded as failed (dirty where DDL cannot be
    rolled back); `results` holds what was applied before it.
    """

    def __init__(
        self,
        message: str,
        signum: int = 2,
        service: str = "",
        revision: str = "",
        results: list[StepResult] | None = None,
    ) -> None:
        self.signum = signum
        self.service = service
        self.revision = revision
        self.results = list(results or [])
        super().__init__(message)

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return 128 + self.signum


class LockLost(MigrationFailed):
    """Mid-run, another runner took a MongoDB service's lease or claimed the next step;
    the step was not run."""


class DirtyService(NcmError):
    """A service whose last step failed on a database without transactional DDL."""


class ChecksumMismatch(NcmError):
    """An applied revision's file changed after it was applied."""


class MultipleHeads(NcmError):
    """A service's history forked without a merge."""


class RollbackRefused(NcmError):
    """Other services' applied revisions still require what a rollback would remove."""


class HookFailed(NcmError):
    """A `before_*` hook failed: the run did not start, nothing changed (exit 1)."""


class ProblemsFound(NcmError):
    """validate, lint or check found problems."""


class RevisionsDeferred(NcmError):
    """migrate ran what it could; revisions wait for a maintenance window (`deferred`
    names them). `--allow-deferred` makes this a success."""

    def __init__(self, message: str, deferred: Sequence[DeferredStep] = ()) -> None:
        self.deferred = list(deferred)
        super().__init__(message)


class ModelsChanged(NcmError):
    """makemigrations --check: a service's models.py has changes no revision holds yet."""

    def __init__(self, message: str, services: list[str] | None = None) -> None:
        self.services = list(services or [])
        super().__init__(message)


class ToolMissing(NcmError):
    """An external program (pg_dump, mysqldump, ...) is not on PATH."""


class BackupInvalid(BadInput):
    """A backup folder cannot be used: no manifest, another service, or the wrong key."""


class BackupFailed(NcmError):
    """A dump or restore program failed."""


class LockTimeout(NcmError):
    """Another runner held the lock past `lock.timeout_s`: exit 3."""

    exit_code = 3


class DatabaseUnreachable(NcmError):
    """A database stayed unreachable after the retries: exit 4."""

    exit_code = 4
