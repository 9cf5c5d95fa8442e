"""Findings as CI reads them: plain text, JSON, GitHub workflow commands, SARIF 2.1.0 and
JUnit XML. Pure: a `Report` in, text out (the CLI prints it or writes it to a file).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, Literal

from .findings import Finding, Report
from .linting import RULES as LINT_RULES
from .urls import redact_known

Format = Literal["text", "json", "github", "sarif", "junit"]
FORMATS: tuple[Format, ...] = ("text", "json", "github", "sarif", "junit")
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"

# Each rule the checks report, with the help a reader of a SARIF file or a JUnit report
# sees; lint's rules come from `linting.RULES`, squawk's are named `squawk:<rule>`.
CHECK_RULES: Mapping[str, str] = {
    "malformed-revision": "A revision file whose header cannot be read; fix the file.",
    "duplicate-revision": "Two revision files of a service use one revision id; give one a new id.",
    "duplicate-label": "A branch label used by more than one revision.",
    "missing-revision": "A revision names a down_revision or requirement that no file holds.",
    "cycle": "Revisions that depend on each other in a circle; nothing can run first.",
    "multiple-heads": "A service whose heads fork without a merge; run makemigrations SVC --merge.",
    "missing-function": "A revision that defines no upgrade() or downgrade().",
    "import-error": "A revision module that raises when imported.",
    "version-table-clash": "Two services on one database share a version table.",
    "dirty": "A revision failed part way on a database that cannot roll DDL back; repair it.",
    "missing-file": "A revision applied in the database whose file is gone.",
    "checksum-drift": "A revision file edited after it was applied.",
    "requirement-missing": "An applied revision whose requirement in another service is not applied there.",
    "pending": "Revisions not applied yet; run manage.py migrate.",
    "models-changed": "models.py has changes that no revision holds yet; run makemigrations.",
}
# `drift` and `check --drift/--roundtrip`: a JUnit case only where they ran (`COMMAND_RULES`).
SCHEMA_RULES: Mapping[str, str] = {
    "drift": "The live database differs from the schema its applied revisions give.",
    "roundtrip": "A revision whose downgrade does not restore the schema before it, or raises.",
}
_LINT_RULES = ("malformed-revision", *LINT_RULES)
# The checks each command runs: one JUnit test case per service and check.
COMMAND_RULES: Mapping[str, tuple[str, ...]] = {
    "lint": _LINT_RULES,
    "validate": (*(r for r in CHECK_RULES if r not in ("pending", "models-changed")), *LINT_RULES),
    "check": (*CHECK_RULES, *LINT_RULES),
    "drift": ("drift",),
}


def rule_help(rule: str) -> str:
    """One sentence on what a rule finds."""
    if rule in CHECK_RULES:
        return CHECK_RULES[rule]
    if rule in SCHEMA_RULES:
        return SCHEMA_RULES[rule]
    if rule in LINT_RULES:
        return f"The revision's upgrade() {LINT_RULES[rule]}; add `# ncm: allow {rule}` if meant."
    if rule.startswith("squawk:"):
        return f"squawk's rule {rule.split(':', 1)[1]} on the SQL the revision renders."
    return f"ncm-migrate's rule {rule}."


def most_severe_first(report: Report) -> list[Finding]:
    """The report's findings, errors before warnings, each group in the report's order."""
    return report.errors + report.warnings


def render(report: Report, fmt: Format, command: str = "check") -> str:
    """`report` in format `fmt` (what `command` found), ending with a line break."""
    if fmt == "junit":
        return render_junit(report, command)
    renderers: dict[str, Callable[[Report], str]] = {
        "text": render_text, "json": render_json, "github": render_github, "sarif": render_sarif,
    }
    return renderers[fmt](report)


def render_text(report: Report) -> str:
    lines: list[str] = []
    for f in report.findings:
        where = f"{f.service}:{f.revision}" if f.revision else f.service
        lines.append(f"{f.severity:<7} {where} {f.rule} {f.where()}")
        lines.append(f"        {redact_known(f.message)}")
    lines.append(f"{'OK' if report.ok else 'FAILED'}: {report.summary()}")
    return "\n".join(lines) + "\n"


def render_json(report: Report) -> str:
    """`{ok, findings}`, as `--json` has always written it."""
    data = {"ok": report.ok, "findings": [finding_json(f) for f in report.findings]}
    return redact_known(json.dumps(data, indent=2)) + "\n"


def finding_json(finding: Finding) -> dict[str, Any]:
    """A finding as JSON: `object`, `expected` and `actual` only on schema differences
    (`drift`, `roundtrip`), so that other findings read as they always have."""
    data = asdict(finding)
    if finding.object is None:
        for key in ("object", "expected", "actual"):
            del data[key]
    return data


# -- GitHub workflow commands ---------------------------------------------------------


def escape_data(text: str) -> str:
    """A workflow command's message, escaped as the runner reads it back."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value (file, title), escaped as the runner reads it."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def render_github(report: Report) -> str:
    """One `::error ...::` or `::warning ...::` line per finding, most severe first (GitHub
    shows only the first few annotations of each kind per step)."""
    lines = []
    for f in most_severe_first(report):
        where = f"{f.service}:{f.revision}" if f.revision else f.service
        props = [f"file={escape_property(_posix(f.file))}"]
        if f.line:
            props.append(f"line={f.line}")
        props.append(f"title={escape_property(f'{f.rule} ({where})')}")
        lines.append(f"::{f.severity} {','.join(props)}::{escape_data(redact_known(f.message))}")
    return "".join(f"{line}\n" for line in lines)


# -- SARIF 2.1.0 ----------------------------------------------------------------------


def render_sarif(report: Report, version: str | None = None) -> str:
    """One SARIF 2.1.0 run: the tool with a rule per rule found, and a result per finding
    with its file (relative to the project) and line."""
    rules = sorted({f.rule for f in report.findings})
    index = {rule: n for n, rule in enumerate(rules)}
    driver: dict[str, Any] = {
        "name": "ncm-migrate",
        "version": version or _version(),
        "rules": [
            {
                "id": rule,
                "name": rule,
                "shortDescription": {"text": rule_help(rule)},
                "help": {"text": rule_help(rule)},
            }
            for rule in rules
        ],
    }
    results = [_sarif_result(f, index[f.rule]) for f in report.findings]
    log = {"$schema": SARIF_SCHEMA, "version": "2.1.0",
           "runs": [{"tool": {"driver": driver}, "results": results}]}
    return redact_known(json.dumps(log, indent=2)) + "\n"


def _sarif_result(f: Finding, rule_index: int) -> dict[str, Any]:
    location: dict[str, Any] = {"artifactLocation": {"uri": _uri(f.file)}}
    if f.line:
        location["region"] = {"startLine": f.line}
    result: dict[str, Any] = {
        "ruleId": f.rule,
        "ruleIndex": rule_index,
        "level": f.severity,
        "message": {"text": f.message},
        "locations": [{"physicalLocation": location}],
    }
    if f.revision:
        result["properties"] = {"service": f.service, "revision": f.revision}
    else:
        result["properties"] = {"service": f.service}
    return result


def _uri(file: str) -> str:
    """A relative file as a relative URI (forward slashes); an absolute one as `file://`."""
    posix = _posix(file)
    if PurePosixPath(posix).is_absolute():
        return PurePosixPath(posix).as_uri()
    from urllib.parse import quote

    return quote(posix)


def _posix(file: str) -> str:
    return PureWindowsPath(file).as_posix() if "\\" in file else file


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ncm-migrate")
    except PackageNotFoundError:
        return "0"


# -- JUnit XML ------------------------------------------------------------------------


def render_junit(report: Report, command: str = "check") -> str:
    """A test suite per service and a test case per check (`COMMAND_RULES`): a failure for
    each check with errors (or warnings, with `--strict`), its warnings otherwise in the
    case's system-out. Written with the standard library's ElementTree."""
    by_service: dict[str, dict[str, list[Finding]]] = {name: {} for name in report.checked}
    for f in report.findings:
        by_service.setdefault(f.service, {}).setdefault(f.rule, []).append(f)
    checks = COMMAND_RULES.get(command, tuple(CHECK_RULES))
    suites = ET.Element("testsuites", name=f"ncm-migrate {command}")
    total = failed = 0
    for service in sorted(by_service):
        found = by_service[service]
        rules = [*checks, *sorted(r for r in found if r not in checks)]
        suite = ET.SubElement(suites, "testsuite", name=service)
        suite_failed = 0
        for rule in rules:
            case = ET.SubElement(suite, "testcase", name=rule, classname=f"ncm-migrate.{service}")
            hits = found.get(rule, [])
            failing = [f for f in hits if f.severity == "error" or report.strict]
            if failing:
                suite_failed += 1
                body = "\n".join(f"{f.where()}: {f.message}" for f in failing)
                failure = ET.SubElement(case, "failure", message=failing[0].message,
                                        type=rule)
                failure.text = body
            rest = [f for f in hits if f not in failing]
            if rest:
                ET.SubElement(case, "system-out").text = "\n".join(
                    f"{f.severity}: {f.where()}: {f.message}" for f in rest
                )
        suite.set("tests", str(len(rules)))
        suite.set("failures", str(suite_failed))
        suite.set("errors", "0")
        total += len(rules)
        failed += suite_failed
    suites.set("tests", str(total))
    suites.set("failures", str(failed))
    suites.set("errors", "0")
    ET.indent(suites)
    text = ET.tostring(suites, encoding="unicode", xml_declaration=False)
    return redact_known('<?xml version="1.0" encoding="utf-8"?>\n' + text) + "\n"
