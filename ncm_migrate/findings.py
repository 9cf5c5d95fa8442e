"""What `validate`, `lint` and `check` report: findings, and the exit code they add up to.

Pure values: no I/O beyond resolving a path that is not plainly under the root.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Severity = Literal["error", "warning"]

# Findings that mean the input cannot be used at all: a cycle or a missing revision is bad
# input (exit 2) in every command, so validate and check exit 2 on these too.
BAD_INPUT_RULES = frozenset({
    "cycle", "missing-revision", "duplicate-revision", "duplicate-label", "malformed-revision",
})


@dataclass(frozen=True)
class Finding:
    """One problem: where it is, which rule found it, and how bad it is."""

    service: str
    revision: str
    rule: str
    severity: Severity
    message: str
    file: str
    line: int | None = None
    # drift and round trip: the schema object that differs, and how it should and does read
    # (None: it should not exist / it is missing)
    object: str | None = None
    expected: str | None = None
    actual: str | None = None

    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


def relative_file(path: Path, root: Path | None) -> str:
    """`path` as a finding names it: relative to the project's `root` when inside it, else
    whole (as given when `root` is None)."""
    if root is None:
        return str(path)
    try:
        return str(path.relative_to(root))
    except ValueError:
        pass
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class Report:
    """Findings in a stable order, the exit code they mean, and the services checked
    (`checked`: a JUnit report names the checks that passed too)."""

    findings: tuple[Finding, ...]
    strict: bool = False
    checked: tuple[str, ...] = ()

    @classmethod
    def of(cls, findings: Iterable[Finding], strict: bool = False,
           checked: Iterable[str] = ()) -> Report:
        ordered = sorted(
            set(findings), key=lambda f: (f.service, f.revision, f.file, f.line or 0, f.rule, f.message)
        )
        return cls(tuple(ordered), strict, tuple(dict.fromkeys(checked)))

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def exit_code(self) -> int:
        """2 for bad input, 1 for errors (or warnings with `strict`), else 0."""
        if any(f.rule in BAD_INPUT_RULES for f in self.findings):
            return 2
        if self.errors or (self.strict and self.warnings):
            return 1
        return 0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def summary(self) -> str:
        e, w = len(self.errors), len(self.warnings)
        return f"{e} error{'s' * (e != 1)}, {w} warning{'s' * (w != 1)}"


def first_few(items: Sequence[str], shown: int = 5) -> str:
    """`a, b, c` or, past `shown` items, `a, b, c, d, e and 7 more`: a message stays one
    line however many there are."""
    if len(items) <= shown:
        return ", ".join(items)
    return f"{', '.join(items[:shown])} and {len(items) - shown} more"
