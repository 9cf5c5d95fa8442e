"""Hooks around migrate (before_migrate, after_step, after_migrate, after_failure), after
makemigrations writes a file (after_write), and the webhook told of each run."""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from monorepo import Monorepo, ledger, tables

HOOK = """\
import json, sys
data = json.loads(sys.stdin.read())
with open("hooks.log", "a") as log:
    log.write(json.dumps([sys.argv[1], data]) + "\\n")
if len(sys.argv) > 2 and sys.argv[2] == "fail":
    print("the gate is closed", file=sys.stderr)
    sys.exit(3)
if len(sys.argv) > 2 and sys.argv[2] == "hang":
    import time
    time.sleep(60)
"""


def _hook(name: str, *more: str) -> str:
    return json.dumps([sys.executable, "hook.py", name, *more])


def _project(repo: Monorepo, tmp_path: Path, hooks: str, failing: bool = False) -> str:
    url = f"sqlite:///{tmp_path}/db.sqlite"
    repo.table("users", "0001_initial", "users_t")
    repo.table("billing", "0001_initial", "invoices", requires=["users:0001"])
    if failing:
        repo.revision("billing", "0002_boom", down="0001_initial", upgrade="raise RuntimeError('boom')")
    repo.write("hook.py", HOOK)
    repo.settings(f'[development]\ndatabase_url = "{url}"\n[development.hooks]\n{hooks}\n')
    return url


def _log(repo: Monorepo) -> list[tuple[str, dict[str, Any]]]:
    path = repo.root / "hooks.log"
    if not path.exists():
        return []
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()]  # type: ignore[misc]


def test_hooks_run_in_order_with_the_runs_summary(repo: Monorepo, tmp_path: Path) -> None:
    repo.write("team_hooks_order.py",  # in-process: the current folder is the caller's
               f"import json\ndef record(summary):\n"
               f"    with open({str(repo.root / 'hooks.log')!r}, 'a') as log:\n"
               f"        log.write(json.dumps(['callable', summary]) + '\\n')\n")
    url = _project(repo, tmp_path, f"before_migrate = [{_hook('before')}]\n"
                             f"after_step = [{_hook('step')}]\n"
                             f"after_migrate = [{_hook('after')}, \"team_hooks_order:record\"]\n"
                             f"after_failure = [{_hook('failure')}]\n")
    result = repo.cli("migrate")
    assert result.code == 0, result.output
    log = _log(repo)
    assert [name for name, _ in log] == ["before", "step", "step", "after", "callable"]
    before, after = log[0][1], log[3][1]
    assert before["run_id"] and {entry["run_id"] for _, entry in log} == {before["run_id"]}
    assert {row["run_id"] for row in ledger(url)} == {before["run_id"]}  # the ledger's id
    assert before["event"] == "before_migrate" and before["outcome"] == "pending"
    assert before["environment"] == "development" and before["command"] == "migrate"
    assert before["services"] == ["users", "billing"] and before["steps"] == []
    assert [(s["service"], s["revision"]) for s in before["plan"]] == [
        ("users", "0001_initial"), ("billing", "0001_initial")]
    assert [entry["step"]["service"] for _, entry in log[1:3]] == ["users", "billing"]
    assert log[1][1]["step"]["outcome"] == "applied"
    assert after["outcome"] == "succeeded" and after["error"] is None
    assert [s["outcome"] for s in after["steps"]] == ["applied", "applied"]
    assert log[4][1] == {**after, "duration_ms": log[4][1]["duration_ms"]}


def test_a_failing_before_hook_stops_the_run_with_nothing_applied(repo: Monorepo, tmp_path: Path) -> None:
    url = _project(repo, tmp_path, f"before_migrate = [{_hook('before', 'fail')}]\n"
                                   f"after_failure = [{_hook('failure')}]\n")
    result = repo.cli("migrate")
    assert result.code == 1 and "Traceback" not in result.output
    assert "exited with 3: the gate is closed" in result.stderr and "nothing was changed" in result.stderr
    database = Path(url.removeprefix("sqlite:///"))
    assert not database.exists() or (tables(url) == set() and not ledger(url))
    assert [name for name, _ in _log(repo)] == ["before"]  # the run did not start: no after hooks


def test_a_hook_past_its_timeout_is_stopped(repo: Monorepo, tmp_path: Path) -> None:
    _project(repo, tmp_path, f"timeout_s = 0.5\nbefore_migrate = [{_hook('before', 'hang')}]\n")
    result = repo.cli("migrate")
    assert result.code == 1 and "did not finish within 0.5s (hooks.timeout_s)" in result.stderr


def test_a_callable_hook_past_its_timeout_fails_the_before_hook(
        repo: Monorepo, tmp_path: Path) -> None:
    repo.write("team_hooks_hang.py", "import threading\nlet_go = threading.Event()\n"
                                     "def hang(summary):\n    let_go.wait()\n")
    url = _project(repo, tmp_path, 'timeout_s = 0.5\nbefore_migrate = ["team_hooks_hang:hang"]\n')
    try:
        result = repo.cli("migrate")
        assert result.code == 1 and "Traceback" not in result.output
        assert "did not return within 0.5s (hooks.timeout_s)" in result.stderr
        assert not ledger(url)  # a before-hook that never answers stops the run before it starts
    finally:
        hung = sys.modules.get("team_hooks_hang")
        if hung is not None:
            hung.let_go.set()  # the thread left running ends


def test_after_hook_failures_never_change_the_runs_outcome(repo: Monorepo, tmp_path: Path) -> None:
    url = _project(repo, tmp_path, f"after_migrate = [{_hook('after', 'fail')}]\n"
                                   "after_step = [\"no_such_module_here:fn\"]\n")
    result = repo.cli("migrate")
    assert result.code == 0, result.output
    assert "hook after_migrate" in result.stderr and "exited with 3" in result.stderr
    assert "hook after_step `no_such_module_here:fn` could not be imported" in result.stderr
    assert {"users_t", "invoices"} <= tables(url)

    # a run that fails keeps its own exit code and error; after_failure sees it
    repo.revision("billing", "0002_boom", down="0001_initial", upgrade="raise RuntimeError('boom')")
    repo.settings(f'[development]\ndatabase_url = "{url}"\n[development.hooks]\n'
                  f"after_failure = [{_hook('failure', 'fail')}]\n")
    failed = repo.cli("migrate")
    assert failed.code == 1 and "boom" in failed.stderr and "hook after_failure" in failed.stderr
    (name, summary), = _log(repo)[-1:]
    assert name == "failure" and summary["outcome"] == "failed" and "boom" in summary["error"]
    assert [s["outcome"] for s in summary["steps"]] == ["failed"]


def test_after_write_runs_on_each_new_revision_file(repo: Monorepo, tmp_path: Path) -> None:
    repo.write("fmt.py", "import sys\nopen(sys.argv[1], 'a').write('# formatted\\n')\n")
    _project(repo, tmp_path, f"after_write = [{json.dumps([sys.executable, 'fmt.py'])}]\n")
    result = repo.cli("makemigrations", "users", "--empty", "-m", "second")
    assert result.code == 0, result.output
    new = sorted((repo.root / "services/users/migrations").glob("0002_*.py"))
    assert len(new) == 1 and new[0].read_text().endswith("# formatted\n")


@pytest.mark.parametrize("value", ['"rm -rf /"', "[1, 2]", '[["ok"], 5]', "[[]]"])
def test_bad_hook_settings_are_one_sentence(repo: Monorepo, tmp_path: Path, value: str) -> None:
    _project(repo, tmp_path, f"before_migrate = {value}\n")
    result = repo.cli("migrate")
    assert result.code == 2 and "hooks.before_migrate" in result.stderr
    assert "Traceback" not in result.output


# -- the webhook ------------------------------------------------------------------------


class _Webhook(BaseHTTPRequestHandler):
    bodies: list[dict[str, Any]]

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.server.bodies.append((self.path, json.loads(self.rfile.read(length))))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        return None


@pytest.fixture
def webhook() -> Iterator[HTTPServer]:
    server = HTTPServer(("127.0.0.1", 0), _Webhook)
    server.bodies = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_webhook_receives_one_json_body_per_run(repo: Monorepo, tmp_path: Path,
                                                    webhook: HTTPServer) -> None:
    _project(repo, tmp_path, "")
    secret = "T000/B000/s3cr3tT0ken"
    repo.write("settings/.secrets.toml", "[development.notify]\n"
               f'webhook_url = "http://127.0.0.1:{webhook.server_port}/hooks/{secret}?sig=abc"\n')
    assert repo.cli("migrate").code == 0
    assert repo.cli("migrate").code == 0  # nothing to do is a run too
    bodies = webhook.bodies  # type: ignore[attr-defined]
    assert len(bodies) == 2
    path, body = bodies[0]
    assert path == f"/hooks/{secret}?sig=abc"
    assert body["outcome"] == "succeeded" and body["environment"] == "development"
    assert body["services"] == ["users", "billing"] and body["duration_ms"] >= 0
    assert body["command"] == "migrate" and body["run_id"] and body["run_id"] != bodies[1][1]["run_id"]
    assert "ncm-migrate migrate succeeded in development: users, billing" in body["text"]
    assert bodies[1][1]["services"] == []


def test_a_down_webhook_does_not_change_the_exit_code(repo: Monorepo, tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = _project(repo, tmp_path, "")
    repo.write("settings/.secrets.toml", "[development.notify]\nretries = 1\ntimeout_s = 2\n"
               f'webhook_url = "http://127.0.0.1:{port}/services/s3cr3tT0ken"\n')
    result = repo.cli("migrate")
    assert result.code == 0 and {"users_t", "invoices"} <= tables(url)
    assert f"the webhook http://127.0.0.1:{port}/*** could not be reached" in result.stderr
    assert "after 2 attempts" in result.stderr and "s3cr3tT0ken" not in result.output
