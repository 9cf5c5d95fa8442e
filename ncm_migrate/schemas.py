"""Schemas as values, and their differences: what `drift` and `check --roundtrip` compare.

A `Schema` is a flat map from an object's path (`table users / column email`) to a
canonical description of it (`VARCHAR(255) NULL`), read by a backend; comparing two is pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .findings import Finding


@dataclass(frozen=True)
class Schema:
    """A database's schema: each object's path and description, sorted by path."""

    objects: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, objects: Mapping[str, str] | Iterable[tuple[str, str]]) -> Schema:
        items = objects.items() if isinstance(objects, Mapping) else objects
        return cls(tuple(sorted(dict(items).items())))

    def as_dict(self) -> dict[str, str]:
        return dict(self.objects)


@dataclass(frozen=True)
class Difference:
    """One object that is not as expected: `expected` None when it should not be there,
    `actual` None when it is missing."""

    object: str
    expected: str | None
    actual: str | None

    def describe(self) -> str:
        if self.actual is None:
            return f"{self.object}: missing (expected {self.expected})"
        if self.expected is None:
            return f"{self.object}: not expected, found {self.actual}"
        return f"{self.object}: expected {self.expected}, found {self.actual}"


def compare_schemas(expected: Schema, actual: Schema) -> list[Difference]:
    """Every object whose description differs between `expected` and `actual`, by path."""
    want, have = expected.as_dict(), actual.as_dict()
    return [
        Difference(path, want.get(path), have.get(path))
        for path in sorted(want.keys() | have.keys())
        if want.get(path) != have.get(path)
    ]


def new_differences(before: Sequence[Difference], after: Sequence[Difference]) -> list[Difference]:
    """The differences in `after` that `before` did not already have (so that a step is
    blamed only for what it changed)."""
    seen = set(before)
    return [d for d in after if d not in seen]


def drift_findings(service: str, file: str, differences: Iterable[Difference]) -> list[Finding]:
    """One `drift` error per difference between the schema the applied revisions give and
    the live database."""
    return [
        Finding(service, "", "drift", "error",
                f"the live database differs from its applied revisions: {d.describe()}", file,
                object=d.object, expected=d.expected, actual=d.actual)
        for d in differences
    ]


def roundtrip_findings(service: str, revision: str, file: str,
                       differences: Iterable[Difference], problem: str) -> list[Finding]:
    """One `roundtrip` error per difference a step left between a schema and the one
    recorded for that point (`problem` says which step and which record)."""
    return [
        Finding(service, revision, "roundtrip", "error", f"{problem}: {d.describe()}", file,
                object=d.object, expected=d.expected, actual=d.actual)
        for d in differences
    ]


def roundtrip_failure(service: str, revision: str, file: str, doing: str, error: str) -> Finding:
    """The `roundtrip` error of a step (`doing`) that raised."""
    return Finding(service, revision, "roundtrip", "error", f"{doing} failed: {error}", file)
