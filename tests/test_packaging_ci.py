"""ncm-migrate in other tools' CI: the pre-commit hooks (run offline with `pre-commit
try-repo`), the composite GitHub Action and the example workflows (actionlint, and the
GitHub and GitLab schemas vendored in check-jsonschema)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from monorepo import REPO, Monorepo
from ruamel.yaml import YAML

BIN = Path(sys.executable).parent
WORKFLOW = REPO / "docs/ci/github-workflow.yml"
GITLAB = REPO / "docs/ci/gitlab-ci.yml"
ACTION = REPO / "action.yml"


def _yaml(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                   cwd=root, check=True, capture_output=True)


def _offline_env(tmp_path: Path) -> dict[str, str]:
    """This venv's tools first on PATH, pre-commit's cache in the test's folder, no proxy
    and no index: nothing may be fetched."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NCM_") or k.startswith("NCM_TEST_")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PRE_COMMIT_HOME=str(tmp_path / "pc-home"),
               PIP_NO_INDEX="1", HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    return env


def _try_repo(root: Path, env: dict[str, str], hook: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "pre-commit"), "try-repo", str(REPO), hook, *args],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_pre_commit_hooks_check_the_changed_services_offline(repo: Monorepo, tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.fail("git is needed for pre-commit")
    repo.revision("users", "0001_initial", upgrade="op.drop_table('legacy')")
    repo.table("billing", "0001_initial", "invoices")
    repo.settings(f'[development]\ndatabase_url = "sqlite:///{tmp_path}/db.sqlite"\n'
                  '[development.lint]\nseverity = "error"\n')
    repo.write("docs/readme.py", "# not a service's file\n")
    _git(repo.root, "init", "-q")
    _git(repo.root, "add", "-A")
    env = _offline_env(tmp_path)

    # the changed file is users': its drop-table blocks the commit
    users = "services/users/migrations/0001_initial.py"
    lint = _try_repo(repo.root, env, "ncm-migrate-lint", "--files", users)
    assert lint.returncode == 1, lint.stdout + lint.stderr
    assert "drop-table" in lint.stdout and users in lint.stdout

    # only billing changed: users is not linted
    billing = "services/billing/migrations/0001_initial.py"
    clean = _try_repo(repo.root, env, "ncm-migrate-lint", "--files", billing, "docs/readme.py")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "Passed" in clean.stdout and "drop-table" not in clean.stdout

    # validate: every file (settings/ among them: every service)
    validate = _try_repo(repo.root, env, "ncm-migrate-validate", "--all-files")
    assert validate.returncode == 1 and "users:0001_initial drop-table" in validate.stdout
    assert "Traceback" not in validate.stdout + validate.stderr


def test_actionlint_accepts_the_example_workflow_with_this_action(tmp_path: Path) -> None:
    """The example workflow, using this repository's action.yml as a local action, so that
    actionlint checks the workflow's inputs against the action's own."""
    actionlint = BIN / "actionlint"
    workflows = tmp_path / ".github/workflows"
    workflows.mkdir(parents=True)
    _git(tmp_path, "init", "-q")
    shutil.copy(ACTION, tmp_path / "action.yml")
    text = WORKFLOW.read_text()
    assert "uses: ncm-migrate/ncm-migrate@v1" in text
    local = text.replace("uses: ncm-migrate/ncm-migrate@v1", "uses: ./")
    (workflows / "migrations.yml").write_text(local)
    result = subprocess.run([str(actionlint), "-no-color"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr

    # actionlint did read the action: an input it does not declare is an error
    (workflows / "migrations.yml").write_text(local.replace("changed-since:", "changed_since:"))
    wrong = subprocess.run([str(actionlint), "-no-color"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
    assert wrong.returncode == 1 and 'input "changed_since" is not defined' in wrong.stdout


@pytest.mark.parametrize(("path", "schema"), [
    (ACTION, "vendor.github-actions"),
    (WORKFLOW, "vendor.github-workflows"),
    (GITLAB, "vendor.gitlab-ci"),
])
def test_ci_files_match_their_schemas(path: Path, schema: str) -> None:
    result = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", schema, str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_action_annotates_uploads_sarif_and_fails_on_findings() -> None:
    action = _yaml(ACTION)
    assert action["runs"]["using"] == "composite"
    steps = action["runs"]["steps"]
    scripts = "\n".join(s.get("run", "") for s in steps)
    assert 'ncm-migrate check "${args[@]}" --format github' in scripts
    assert 'ncm-migrate check "${args[@]}" --format sarif -o "$SARIF_FILE"' in scripts
    assert '--changed-since "$CHANGED_SINCE"' in scripts
    upload = next(s for s in steps if str(s.get("uses", "")).startswith("github/codeql-action/upload-sarif@"))
    assert upload["with"]["sarif_file"].endswith("${{ inputs.sarif-file }}")
    assert steps[-1]["if"] == "${{ steps.check.outputs.exit-code != '0' }}"
    # inputs reach the scripts through env, never pasted into the shell text
    assert "${{ inputs." not in scripts

    job = _yaml(GITLAB)["ncm-migrate"]
    script = "\n".join(job["script"])
    assert "--format junit -o ncm-migrate-junit.xml" in script
    assert job["artifacts"]["reports"]["junit"] == "ncm-migrate-junit.xml"
    assert job["artifacts"]["when"] == "always"


def test_the_pre_commit_manifest_runs_offline() -> None:
    hooks = {h["id"]: h for h in _yaml(REPO / ".pre-commit-hooks.yaml")}
    assert set(hooks) == {"ncm-migrate-lint", "ncm-migrate-validate"}
    for hook in hooks.values():
        # `python` would build an environment from an index; `system` uses the installed one
        assert hook["language"] in ("system", "unsupported")
        assert hook["entry"].startswith("ncm-migrate ") and hook.get("pass_filenames", True)


def test_the_readme_says_how_to_use_it_in_ci() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Use it in CI", 1)[1].split("\n## ", 1)[0]
    for needle in (".pre-commit-hooks.yaml", "action.yml", "docs/ci/github-workflow.yml",
                   "docs/ci/gitlab-ci.yml", "--format sarif", "--changed-since"):
        assert needle in section
