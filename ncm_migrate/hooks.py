"""Running the team's hooks: commands (argv, no shell) given a JSON summary on stdin, or
Python callables (`module:function`) given it as their argument, each within a timeout.

A hook fails by exiting non-zero, raising, or outliving its timeout; the caller decides
what a failure means (`before_*` stops a run, `after_*` is reported).
"""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Hook
from .pyfiles import one_line
from .urls import redact_known

log = logging.getLogger(__name__)
_OUTPUT_SHOWN = 500  # characters of a failed command's output kept in its message


@dataclass(frozen=True)
class HookFailure:
    """One hook that failed, and why, in one line."""

    event: str
    hook: str
    reason: str

    def __str__(self) -> str:
        return f"hook {self.event} `{self.hook}` {self.reason}"


def run_hooks(
    event: str,
    hooks: Sequence[Hook],
    payload: Mapping[str, Any],
    *,
    root: Path,
    timeout_s: float,
    extra_args: Sequence[str] = (),
) -> list[HookFailure]:
    """Run `hooks` in order, each given `payload` (JSON on a command's stdin, a dict to a
    callable); commands get `extra_args` appended (`after_write`: the file's path), and a
    callable gets them as further arguments. Returns the failures; every hook runs."""
    failures: list[HookFailure] = []
    for hook in hooks:
        if hook.call:
            reason = _call(hook.call, payload, extra_args, root, timeout_s)
        else:
            reason = _command([*hook.argv, *extra_args], payload, root, timeout_s)
        if reason is not None:
            failure = HookFailure(event, str(hook), redact_known(reason))
            log.debug("%s", failure)
            failures.append(failure)
    return failures


def _command(argv: list[str], payload: Mapping[str, Any], root: Path, timeout_s: float) -> str | None:
    try:
        proc = subprocess.run(argv, input=json.dumps(payload, default=str), cwd=root,
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return f"did not finish within {timeout_s:g}s (hooks.timeout_s) and was stopped"
    except OSError as exc:
        return f"could not be started: {exc.strerror or exc}"
    if proc.returncode != 0:
        said = (proc.stderr.strip() or proc.stdout.strip())[-_OUTPUT_SHOWN:]
        return f"exited with {proc.returncode}" + (f": {_lines_joined(said)}" if said else "")
    return None


def _lines_joined(text: str) -> str:
    return " / ".join(line.strip() for line in text.splitlines() if line.strip())


def _call(spec: str, payload: Mapping[str, Any], extra_args: Sequence[str], root: Path,
          timeout_s: float) -> str | None:
    try:
        function = _import(spec, root)
    except Exception as exc:
        return f"could not be imported: {one_line(exc)}"
    outcome: list[str | None] = []

    def target() -> None:
        try:
            function(dict(payload), *extra_args)
            outcome.append(None)
        except BaseException as exc:  # user code: SystemExit is a failure too
            outcome.append(f"raised {one_line(exc)}")

    worker = threading.Thread(target=target, name=f"hook {spec}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        return f"did not return within {timeout_s:g}s (hooks.timeout_s); it is left running"
    return outcome[0] if outcome else "stopped without returning"


def _import(spec: str, root: Path) -> Callable[..., object]:
    module_name, _, attr = spec.partition(":")
    added = str(root) not in sys.path
    if added:
        sys.path.insert(0, str(root))
    try:
        value: object = importlib.import_module(module_name)
    finally:
        if added:
            sys.path.remove(str(root))
    for part in attr.split("."):
        value = getattr(value, part)
    if not callable(value):
        raise TypeError(f"{spec} is not callable")
    return value
