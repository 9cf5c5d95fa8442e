"""check --changed-since REF (and migrate --plan --changed-since): only the services whose
files changed since REF in git, plus those that depend on them (changes.py).

      users ◄── billing ◄── audit        reports
   (requires users:0001) (depends_on billing)   (on its own)
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from monorepo import Monorepo


def git(repo: Monorepo, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false",
         *args], cwd=repo.root, check=True, capture_output=True, text=True,
    ).stdout.strip()


def commit(repo: Monorepo, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def project(repo: Monorepo, tmp_path: Path) -> Monorepo:
    repo.table("users", "0001_initial", "users_t")
    repo.table("billing", "0001_initial", "invoices", requires=["users:0001"])
    repo.table("audit", "0001_initial", "audit_t")
    repo.table("reports", "0001_initial", "reports_t")
    repo.write("services/reports/settings.toml", "[default]\n")
    repo.settings(f'[development]\ndatabase_url = "sqlite:///{tmp_path}/db.sqlite"\n'
                  '[development.services.audit]\ndepends_on = ["billing"]\n')
    git(repo, "init", "-q", "-b", "main")
    commit(repo, "start")
    return repo


def checked(repo: Monorepo, ref: str) -> set[str]:
    """The services `check --changed-since` checked: nothing is applied, so each checked
    service has a pending revision."""
    result = repo.cli("check", "--changed-since", ref, "--json")
    assert "Traceback" not in result.output
    data = json.loads(result.stdout)
    assert result.code == (1 if data["findings"] else 0)
    return {f["service"] for f in data["findings"] if f["rule"] == "pending"}


def test_a_change_checks_its_service_and_those_that_depend_on_it(project: Monorepo) -> None:
    base = git(project, "rev-parse", "HEAD")
    assert checked(project, base) == set()  # nothing changed: nothing to check

    # a new revision not even added to git yet counts
    project.table("reports", "0002_more", "reports2", down="0001_initial")
    assert checked(project, base) == {"reports"}
    commit(project, "reports")
    assert checked(project, base) == {"reports"}

    # users changes: billing requires it, audit depends on billing
    branch = git(project, "rev-parse", "HEAD")
    project.revision("users", "0002_x", down="0001_initial")
    commit(project, "users")
    assert checked(project, branch) == {"users", "billing", "audit"}
    assert checked(project, "HEAD~1") == {"users", "billing", "audit"}

    # billing changes: audit depends on it; users does not
    tip = git(project, "rev-parse", "HEAD")
    path = project.root / "services/billing/models.py"
    path.write_text("import sqlalchemy as sa\n\nmetadata = sa.MetaData()\n"
                    "sa.Table('invoices', metadata, sa.Column('id', sa.Integer, primary_key=True))\n")
    assert checked(project, tip) == {"billing", "audit"}
    path.unlink()

    # a service's own settings file
    (project.root / "services/reports/settings.toml").write_text("[default]\n# tuned\n")
    assert checked(project, tip) == {"reports"}
    git(project, "checkout", "-q", "--", ".")

    # the project's settings, or ncm-migrate's version: every service
    settings = project.root / "settings/settings.toml"
    settings.write_text(settings.read_text() + "# a comment\n")
    assert checked(project, tip) == {"users", "billing", "audit", "reports"}
    git(project, "checkout", "-q", "--", ".")
    project.write("pyproject.toml", '[project]\nname = "x"\ndependencies = ["ncm-migrate==0.2"]\n')
    assert checked(project, tip) == {"users", "billing", "audit", "reports"}

    # a file outside every service that pins nothing: no service
    (project.root / "pyproject.toml").unlink()
    project.write("docs/notes.md", "notes\n")
    assert checked(project, tip) == set()


def test_migrate_plan_changed_since(project: Monorepo) -> None:
    base = git(project, "rev-parse", "HEAD")
    project.revision("billing", "0002_x", down="0001_initial")
    result = project.cli("migrate", "--plan", "--changed-since", base, "--json")
    assert result.code == 0, result.output
    steps = {(s["service"], s["revision"]) for s in json.loads(result.stdout)["steps"]}
    # billing and audit (its dependent), with users:0001, which billing requires
    assert {s for s, _ in steps} == {"users", "billing", "audit"}
    assert ("billing", "0002_x") in steps and ("reports", "0001_initial") not in steps
    refused = project.cli("migrate", "--changed-since", base)
    assert refused.code == 2 and "--plan" in refused.stderr


def test_bad_refs_and_folders_are_exit_2(project: Monorepo, repo: Monorepo, tmp_path: Path) -> None:
    unknown = project.cli("check", "--changed-since", "no-such-branch")
    assert unknown.code == 2 and "no-such-branch" in unknown.stderr
    assert "Traceback" not in unknown.output and len(unknown.stderr.strip().splitlines()) == 1
    dash = project.cli("check", "--changed-since=--output=x")
    assert dash.code == 2 and not (project.root / "x").exists()

    other = Monorepo(tmp_path / "plain")
    other.root.mkdir()
    other.table("users", "0001_initial", "users_t")
    other.settings(f'[development]\ndatabase_url = "sqlite:///{tmp_path}/plain.sqlite"\n')
    if subprocess.run(["git", "rev-parse"], cwd=other.root, capture_output=True).returncode == 0:
        pytest.skip("the temporary folder is inside a git repository")
    outside = other.cli("check", "--changed-since", "main")
    assert outside.code == 2 and "not inside" in outside.stderr and "git repository" in outside.stderr

    no_git = project.cli("check", "--changed-since", "main", env={"PATH": str(tmp_path / "empty")})
    assert no_git.code == 2 and "needs git" in no_git.stderr


def test_a_file_argument_that_does_not_exist_is_bad_input(repo: Monorepo, tmp_path: Path) -> None:
    """`lint`/`validate` take files (pre-commit passes them); a misspelt one checks nothing
    and must not pass as "OK"."""
    repo.table("users", "0001_initial", "users_t")
    repo.settings(f'[development]\ndatabase_url = "sqlite:///{tmp_path}/db.sqlite"\n')
    real = repo.root / "services/users/migrations/0001_initial.py"
    assert repo.cli("lint", str(real)).code == 0
    for command in ("lint", "validate"):
        missing = repo.cli(command, str(repo.root / "services/userz/migrations/0001_initial.py"))
        assert missing.code == 2 and "No such file" in missing.stderr, missing.output
        assert "Traceback" not in missing.output
