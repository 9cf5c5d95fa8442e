"""squawk (the `squawk-cli` package), PostgreSQL's migration linter: finding its program,
running it over SQL, and reading its JSON report. `linting.squawk_service` feeds it each
revision's offline SQL and turns what it reports into findings.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from .errors import NcmError, ToolMissing
from .urls import redact_known


def find_squawk() -> str:
    """The squawk binary (from the `squawk-cli` package): on PATH or beside this Python."""
    found = shutil.which("squawk")
    if found:
        return found
    beside = Path(sys.executable).parent / "squawk"
    if beside.is_file():
        return str(beside)
    raise ToolMissing(
        "lint.squawk is true but the program 'squawk' was not found; install it with "
        "`pip install squawk-cli` (or `pip install 'ncm-migrate[squawk]'`), or set lint.squawk = false."
    )


def without_version_table(sql: str, version_table: str) -> str:
    """The rendered SQL less the statements on Alembic's version table (not the user's)."""
    statements = re.split(r";[ \t]*\n", sql)
    pattern = re.compile(rf"\b{re.escape(version_table)}\b")
    kept = [s for s in statements if not pattern.search(s)]
    return ";\n".join(kept)


def run_squawk(program: str, sql: str, file: str, root: Path) -> Iterable[tuple[str, str]]:
    """(rule, message) for each of squawk's findings on `sql` (squawk's config applies)."""
    proc = subprocess.run(
        [program, "--reporter", "json", "--stdin-filepath", file],
        input=sql, capture_output=True, text=True, cwd=root, check=False, timeout=120,
    )
    try:
        items = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        raise NcmError(
            f"squawk failed on {file} (exit {proc.returncode}): "
            f"{redact_known(proc.stderr.strip() or proc.stdout.strip())}"
        ) from None
    out = []
    for item in items if isinstance(items, list) else []:
        sql_line = int(item.get("line", 0)) + 1
        help_text = f" {item['help']}" if item.get("help") else ""
        out.append((str(item.get("rule_name", "unknown")),
                    f"{item.get('message', '')}{help_text} (SQL line {sql_line})"))
    return out
