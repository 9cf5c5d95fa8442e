"""Importing a user's Python file as a module: a revision when it is applied or rendered,
a service's models.py, a service command. Nothing else imports user code. Also what it
means when user code exits (`sys.exit`) or is interrupted instead of raising an error."""

from __future__ import annotations

import hashlib
import importlib.util
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from .errors import Interrupted, MigrationFailed, NcmError, RevisionFileError, signal_name
from .model import Revision, StepResult


def import_file(path: Path, module_name: str) -> ModuleType:
    """Import `path` as `module_name`, registered in `sys.modules` (and removed again if
    the import fails, whose exception propagates)."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def load_revision_module(rev: Revision, *, to_apply: bool = False) -> ModuleType:
    """Import one revision file; a file that cannot be imported is bad input (exit 2).

    Imported `to_apply` it, a `SystemExit` or `KeyboardInterrupt` propagates instead: the
    backend records the step it stopped as failed and raises `stopped_error`'s error."""
    digest = hashlib.sha256(str(rev.path).encode()).hexdigest()[:12]
    try:
        return import_file(rev.path, f"ncm_revision_{digest}")
    except Interrupted:
        raise
    except (SystemExit, KeyboardInterrupt) as exc:
        if to_apply:
            raise
        raise RevisionFileError(
            f"{rev.path}: revision {rev.service}:{rev.revision} cannot be imported: "
            f"{one_line(exc)}."
        ) from exc
    except BaseException as exc:  # user code: any other BaseException too
        raise RevisionFileError(
            f"{rev.path}: revision {rev.service}:{rev.revision} cannot be imported: "
            f"{one_line(exc)}."
        ) from exc


def one_line(exc: BaseException) -> str:
    """What an exception raised by user code says, on one line: its type and first line."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0].rstrip('.')}" if lines else type(exc).__name__


STOPPED = (SystemExit, KeyboardInterrupt, Interrupted)
"""What stops a step without being an error of its own: user code that exits, and Ctrl-C
(or a signal turned into `Interrupted`) while a step runs."""


def stopped_error(
    exc: BaseException,
    service: str,
    revision: str,
    where: str,
    results: list[StepResult],
    dirty: bool,
    unrecorded: str = "",
    recorded_as_failed: bool = True,
) -> NcmError | None:
    """The error a run stops with when `exc` (one of `STOPPED`) stopped step
    `service:revision` `where` ("in upgrade()", "while it was imported") after the step was
    recorded as failed; None for any other exception. `SystemExit`, whatever its code, fails
    the run (exit 1); Ctrl-C is `Interrupted` (exit 128 + the signal's number). `dirty`: the
    database may hold part of the step; `unrecorded`: why the failure could not be recorded,
    if it could not (the step's own stop is still what is reported); `recorded_as_failed`:
    False where nothing is recorded (rendering SQL offline)."""
    recorded = (
        f"the step could not be recorded as failed ({unrecorded})" if unrecorded
        else "the step is recorded as failed" if recorded_as_failed
        else "nothing was changed"
    )
    after = (
        f"; part of it may have run: check the database, then run `manage.py repair {service}`"
        if dirty else ""
    )
    if isinstance(exc, SystemExit):
        return MigrationFailed(
            f"Revision {service}:{revision} called {exit_call(exc)} {where}, which stops the "
            f"migration (a revision fails by raising an exception, not by exiting): "
            f"{recorded}{after}.",
            service, revision, results,
        )
    if isinstance(exc, KeyboardInterrupt | Interrupted):
        signum = signal_of(exc)
        return Interrupted(
            f"Revision {service}:{revision} was interrupted {where} ({signal_name(signum)}): "
            f"{recorded}{after}.",
            signum, service, revision, results,
        )
    return None


def exit_call(exc: SystemExit) -> str:
    """The call that raised `exc`, as the user would have written it: `sys.exit(3)`."""
    return f"sys.exit({'' if exc.code is None else repr(exc.code)})"


def signal_of(exc: KeyboardInterrupt | Interrupted) -> int:
    """The signal behind an interruption: SIGINT for Ctrl-C's `KeyboardInterrupt`."""
    return exc.signum if isinstance(exc, Interrupted) else int(signal.SIGINT)


def verify_failure(call: Callable[[], object], revision: Revision,
                   short: Callable[[BaseException], str]) -> str | None:
    """Run a revision's verify() through `call`: why it failed (`short` words a backend's
    error), or None. Exiting is a failure of the check; Ctrl-C stops the run."""
    try:
        call()
        return None
    except Interrupted:
        raise
    except Exception as exc:
        return f"{type(exc).__name__}: {short(exc)}"
    except SystemExit as exc:
        return f"SystemExit: verify() called {exit_call(exc)}"
    except KeyboardInterrupt as exc:
        signum = signal_of(exc)
        raise Interrupted(
            f"Interrupted ({signal_name(signum)}) while verifying revision "
            f"{revision.service}:{revision.revision}; nothing was changed.",
            signum, revision.service, revision.revision,
        ) from None
