"""Environment names: which are valid, which are near misses of each other, and which
environments look like a misspelt section. Pure: the settings module reads the files."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping

from .errors import SettingsError
from .ledger import ENVIRONMENT_LENGTH

DEFAULT_ENV = "development"
# Environment names become folder names (backup.dir/<env>/, var/<env>/), so nothing that
# could climb out of a folder or need quoting.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def check_environment_name(name: str, source: str) -> None:
    """Raise `SettingsError` (exit 2) naming `source` (`--env`, `NCM_ENV`) unless `name` is
    a usable environment name: non-empty, at most the ledger column's length, and safe as a
    folder name."""
    if not name:
        raise SettingsError(
            f"The environment name from {source} is empty; name an environment (for example "
            f"{DEFAULT_ENV}), or leave {source} out for {DEFAULT_ENV}."
        )
    if len(name) > ENVIRONMENT_LENGTH:
        raise SettingsError(
            f"The environment name from {source} is {len(name)} characters long; the ledger "
            f"records at most {ENVIRONMENT_LENGTH}: choose a shorter name."
        )
    if not _NAME.fullmatch(name):
        raise SettingsError(
            f"The environment name {name!r} from {source} is not a valid name: use letters, "
            "digits, '_' and '-', starting with a letter or digit (it becomes part of folder "
            "names such as backup.dir/<env>/)."
        )


def closest_environment(name: str, known: Iterable[str]) -> str | None:
    """The known environment `name` most likely meant, for a "did you mean" hint."""
    found = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return found[0] if found else None


def one_edit_apart(a: str, b: str) -> bool:
    """Whether `b` is `a` with one letter added, dropped, changed, or two neighbours swapped;
    names that differ only in a digit (`eu1`, `eu2`) are numbered siblings, not typos."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diffs = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        if len(diffs) == 1:
            i = diffs[0]
            return not (a[i].isdigit() and b[i].isdigit())
        if len(diffs) != 2:
            return False
        i, j = diffs
        return j == i + 1 and a[i] == b[j] and a[j] == b[i]
    short, long = (a, b) if len(a) < len(b) else (b, a)
    i = next((k for k, (x, y) in enumerate(zip(short, long, strict=False)) if x != y), len(short))
    return short[i:] == long[i + 1 :] and not long[i].isdigit()


def section_warnings(own_keys: Mapping[str, set[str]], chosen: str) -> list[str]:
    """What looks like a misspelt environment section, one sentence each.

    `own_keys` maps each environment to the settings its sections hold in any file
    (`services` for a service's own file). Two environments one edit apart are named
    whichever is chosen; the chosen environment is named when it holds nothing but services
    (its `protected`, `jobs`... may be under a misspelt name), except `development`, whose
    sections usually hold only the services' local databases.
    """
    warnings = []
    names = sorted(own_keys)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if one_edit_apart(a, b):
                warnings.append(
                    f"Environments '{a}' and '{b}' differ by one letter: if one is a misspelt "
                    "section name, the settings under it (protected, say) are missing from the "
                    "other; rename it."
                )
    if chosen != DEFAULT_ENV and own_keys.get(chosen, set()) <= {"services"}:
        warnings.append(
            f"Environment '{chosen}' has no settings of its own besides services: if it has "
            f"some (protected, say), check its section name [{chosen}]; set one under it "
            "(protected = false, say) to silence this."
        )
    return warnings
