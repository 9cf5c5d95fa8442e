"""The checks of a revision header's deploy settings, `phase` and `window`: what
`discovery` reads without importing the file. Pure: no I/O.
"""

from __future__ import annotations

from pathlib import Path

from .errors import RevisionFileError
from .model import PHASES, Phase


def deploy_header(
    values: dict[str, object], lines: dict[str, int], path: Path
) -> tuple[Phase, bool | None]:
    """`phase` ("pre" unless given) and `window` (None unless given), checked."""
    phase = values.get("phase", "pre")
    if phase not in PHASES:
        raise RevisionFileError(
            f"{path}:{lines.get('phase', 1)}: phase must be \"pre\" (before the deploy, the "
            f"default) or \"post\" (after it), not {phase!r}."
        )
    window = values.get("window")
    if window is not None and not isinstance(window, bool):
        raise RevisionFileError(
            f"{path}:{lines.get('window', 1)}: window must be True (run only inside a "
            f"maintenance window) or False (never wait for one), not {window!r}."
        )
    return "post" if phase == "post" else "pre", window
