"""What migrate prints off a terminal, with --json, -q and -v."""

from __future__ import annotations

import json
import re
from pathlib import Path

from monorepo import Monorepo

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (\w+) (up|down) +(\w+) (\w+) \d+ms$")


def three_steps(repo: Monorepo, tmp_path: Path) -> None:
    repo.table("users", "0001_a", "t1")
    repo.table("users", "0002_b", "t2", down="0001_a")
    repo.table("billing", "0001_a", "t3")
    repo.urls({"users": f"sqlite:///{tmp_path}/u.db", "billing": f"sqlite:///{tmp_path}/b.db"})


def test_off_a_terminal_one_line_per_step_and_a_summary(repo: Monorepo, tmp_path: Path) -> None:
    three_steps(repo, tmp_path)
    result = repo.run("migrate")
    assert result.code == 0, result.output
    lines = result.stdout.splitlines()
    steps = [m.groups() for m in map(LINE.match, lines) if m]
    assert [(s[0], s[2], s[3]) for s in steps] == [
        ("billing", "0001_a", "applied"), ("users", "0001_a", "applied"),
        ("users", "0002_b", "applied"),
    ]
    summary = lines[lines.index(next(line for line in lines if "Summary" in line)):]
    rows = {line.split()[0]: line.split()[1:] for line in summary[2:]}
    assert rows["users"][0] == "2" and rows["billing"][0] == "1" and rows["total"][0] == "3"
    assert "\x1b[" not in result.stdout  # no colours or cursor moves in logs


def test_json_output_parses(repo: Monorepo, tmp_path: Path) -> None:
    three_steps(repo, tmp_path)
    result = repo.run("migrate", "--json")
    assert result.code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is True and data["error"] is None
    assert [(s["service"], s["revision"], s["outcome"]) for s in data["steps"]] == [
        ("billing", "0001_a", "applied"), ("users", "0001_a", "applied"),
        ("users", "0002_b", "applied"),
    ]
    assert all(s["duration_ms"] >= 0 for s in data["steps"])


def test_json_output_of_a_failure_parses_and_exits_1(repo: Monorepo, tmp_path: Path) -> None:
    repo.revision("users", "0001_boom", upgrade="raise ValueError('no')")
    repo.urls({"users": f"sqlite:///{tmp_path}/u.db"})
    result = repo.run("migrate", "--json")
    assert result.code == 1
    data = json.loads(result.stdout)
    assert data["ok"] is False and "0001_boom" in data["error"]
    assert data["steps"][0]["outcome"] == "failed"


def test_quiet_prints_only_errors(repo: Monorepo, tmp_path: Path) -> None:
    three_steps(repo, tmp_path)
    result = repo.run("-q", "migrate")
    assert result.code == 0 and result.stdout == "" and result.stderr == ""
    repo.revision("users", "0003_boom", down="0002_b", upgrade="raise ValueError('no')")
    failed = repo.run("migrate", "-q")
    assert failed.code == 1 and failed.stdout == ""
    assert "users:0003_boom" in failed.stderr


def test_verbose_adds_the_sql(repo: Monorepo, tmp_path: Path) -> None:
    three_steps(repo, tmp_path)
    result = repo.run("migrate", "-v")
    assert result.code == 0
    assert "CREATE TABLE t1" in result.stderr


def test_verbose_sql_also_comes_from_parallel_workers(repo: Monorepo, tmp_path: Path) -> None:
    three_steps(repo, tmp_path)
    result = repo.run("migrate", "-v", "--jobs", "2")
    assert result.code == 0, result.output
    assert "CREATE TABLE t1" in result.stderr and "CREATE TABLE t3" in result.stderr


def test_doctor_reports_each_service(repo: Monorepo, db_url: str, tmp_path: Path) -> None:
    repo.table("users", "0001_a", "t1")
    repo.table("billing", "0001_a", "t3")
    repo.urls({"users": db_url, "billing": "postgresql+psycopg://postgres:pw@127.0.0.1:1/x"},
              extra="[development.connect]\nretries = 0\nmax_wait_s = 1\n")
    result = repo.cli("doctor", "--json")
    assert result.code == 1  # billing is down
    found = {d["service"]: d for d in json.loads(result.stdout)}
    users = found["users"]
    assert users["reachable"] is True and users["can_create"] is True
    assert users["pending"] == 1 and users["heads"] == [] and users["lock"] == "free"
    assert users["latency_ms"] >= 0 and users["server_version"]
    assert found["billing"]["reachable"] is False
    assert "is not reachable" in found["billing"]["error"]
    assert "connect.retries" not in found["billing"]["error"]  # doctor tries once: no waiting
    assert "pw@" not in result.output
    assert repo.cli("migrate", "users").code == 0
    after = {d["service"]: d for d in json.loads(repo.cli("doctor", "users", "--json").stdout)}
    assert after["users"]["pending"] == 0 and after["users"]["heads"] == ["0001_a"]
