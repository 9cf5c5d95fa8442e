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


_TRANSACTION_EDGE = re.compile(r"^[ \t]*(BEGIN|COMMIT)[ \t]*;?[ \t]*$", re.IGNORECASE | re.MULTILINE)


def one_transaction(sql: str) -> tuple[str, bool]:
    """A step's SQL as squawk is to read it: when the step is one transaction (one `BEGIN`
    first, one `COMMIT` last, none between), without them and True, for squawk's
    `--assume-in-transaction` (it reads an explicit one as a nested transaction); else the
    SQL as it is (a step that commits part way, for `CREATE INDEX CONCURRENTLY`) and False."""
    edges = list(_TRANSACTION_EDGE.finditer(sql))
    if (len(edges) == 2 and edges[0].group(1).upper() == "BEGIN"
            and edges[1].group(1).upper() == "COMMIT"
            and not sql[:edges[0].start()].strip(" \t\n;") and not sql[edges[1].end():].strip()):
        # Blank where they were, so that squawk's line numbers stay the SQL's.
        return sql[:edges[0].start()] + sql[edges[0].end():edges[1].start()], True
    return sql, False


def run_squawk(program: str, sql: str, file: str, root: Path,
               pg_version: str | None = None) -> Iterable[tuple[str, str]]:
    """(rule, message) for each of squawk's findings on `sql` (squawk's config applies), for
    the PostgreSQL version `pg_version` (squawk's own default if None)."""
    sql, in_transaction = one_transaction(sql)
    args = [program, "--reporter", "json", "--stdin-filepath", file]
    if in_transaction:
        args.append("--assume-in-transaction")
    if pg_version:
        args.append(f"--pg-version={pg_version}")
    proc = subprocess.run(
        args, input=sql, capture_output=True, text=True, cwd=root, check=False, timeout=120,
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
