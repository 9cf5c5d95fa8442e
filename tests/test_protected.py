"""Protected environments: downgrades, destructive revisions, --fake, repair and restore are
refused (exit 2, nothing touched) without --yes off a terminal, and go ahead with it."""

from __future__ import annotations

from pathlib import Path

import pytest
from monorepo import Monorepo, ledger, tables

from ncm_migrate import commands
from ncm_migrate.errors import ConfirmationRefused
from ncm_migrate.questioner import InteractiveQuestioner, NonInteractiveQuestioner, questioner_for


def _repo(repo: Monorepo, url: str) -> None:
    repo.table("users", "0001_initial", "users_t")
    repo.table("users", "0002_old", "old_t", down="0001_initial")
    repo.settings(f"""
        [production]
        protected = true
        database_url = "{url}"
    """)


def _refused(repo: Monorepo, url: str, *args: str) -> None:
    before = (tables(url), ledger(url))
    audit = repo.root / "var" / "audit.jsonl"
    audit_before = audit.read_text() if audit.exists() else ""
    result = repo.cli(*args, "--env", "production")
    assert result.code == 2, result.output
    assert "protected" in result.stderr and "--yes" in result.stderr and "users" in result.stderr
    assert "Traceback" not in result.output
    assert (tables(url), ledger(url)) == before
    assert (audit.read_text() if audit.exists() else "") == audit_before


def test_destructive_work_needs_yes(repo: Monorepo, db_url: str) -> None:
    _repo(repo, db_url)
    # Plain upgrades need no confirmation, even where protected.
    assert repo.cli("migrate", "--env", "production").code == 0

    repo.revision("users", "0003_drop_old", down="0002_old", upgrade="op.drop_table('old_t')",
                  downgrade="op.create_table('old_t', sa.Column('id', sa.Integer, primary_key=True))")
    _refused(repo, db_url, "migrate")
    ok = repo.cli("migrate", "--env", "production", "--yes")
    assert ok.code == 0, ok.output
    assert "old_t" not in tables(db_url)

    _refused(repo, db_url, "rollback", "users")
    _refused(repo, db_url, "migrate", "users", "0001_initial")
    back = repo.cli("rollback", "users", "--env", "production", "--yes")
    assert back.code == 0, back.output
    assert "old_t" in tables(db_url)
    assert [(r["revision"], r["status"]) for r in ledger(db_url)][-1] == ("0003_drop_old", "reverted")

    # --fake records without running, so it needs confirmation even upwards.
    _refused(repo, db_url, "migrate", "--fake")
    assert repo.cli("migrate", "--env", "production", "--fake", "--yes").code == 0
    assert ledger(db_url)[-1]["status"] == "faked"

    _refused(repo, db_url, "repair", "users")
    assert repo.cli("repair", "users", "--env", "production", "--yes").code == 0


def test_restore_needs_yes(repo: Monorepo, sqlite_url: str, tmp_path: Path) -> None:
    _repo(repo, sqlite_url)
    assert repo.cli("migrate", "--env", "production").code == 0
    folder = tmp_path / "bk"
    assert repo.cli("backup", "users", "-o", str(folder), "--env", "production").code == 0
    _refused(repo, sqlite_url, "restore", "users", str(folder))
    assert repo.cli("restore", "users", str(folder), "--env", "production", "--yes").code == 0


def test_unprotected_environment_asks_nothing(repo: Monorepo, sqlite_url: str) -> None:
    repo.table("users", "0001_initial", "users_t")
    repo.revision("users", "0002_drop", down="0001_initial", upgrade="op.drop_table('users_t')")
    repo.settings(f'[development]\ndatabase_url = "{sqlite_url}"\n')
    assert repo.cli("migrate").code == 0
    assert repo.cli("rollback", "users").code == 0


def test_allowed_drop_still_needs_confirmation(repo: Monorepo, sqlite_url: str) -> None:
    _repo(repo, sqlite_url)
    assert repo.cli("migrate", "--env", "production").code == 0
    repo.revision("users", "0003_drop_old", down="0002_old",
                  upgrade="op.drop_table('old_t')  # ncm: allow drop-table")
    assert repo.cli("lint", "--env", "production").code == 0
    _refused(repo, sqlite_url, "migrate")


def test_interactive_confirmation_by_typing_the_service_name(repo: Monorepo, sqlite_url: str) -> None:
    _repo(repo, sqlite_url)
    assert repo.cli("migrate", "--env", "production").code == 0
    asked: list[str] = []

    def typed(answer: str) -> InteractiveQuestioner:
        return InteractiveQuestioner(lambda text: asked.append(text) or answer)

    with pytest.raises(ConfirmationRefused, match="typed 'user'"):
        commands.rollback("users", env="production", root=repo.root, questioner=typed("user"))
    assert "old_t" in tables(sqlite_url)
    assert "reverts 0002_old" in asked[0] and "'users'" in asked[0]
    result = commands.rollback("users", env="production", root=repo.root, questioner=typed("users"))
    assert result.ok and "old_t" not in tables(sqlite_url)
    # A Python caller that passes no questioner is refused, as a script without --yes is.
    with pytest.raises(ConfirmationRefused):
        commands.rollback("users", env="production", root=repo.root)


def test_questioner_choice() -> None:
    def prompt(_text: str) -> str:
        return ""

    assert isinstance(questioner_for(False, True, prompt), InteractiveQuestioner)
    assert questioner_for(False, False, prompt) == NonInteractiveQuestioner(False)
    assert questioner_for(True, False, None) == NonInteractiveQuestioner(True)
    NonInteractiveQuestioner(True).confirm("production", "users", ["reverts x"])
    with pytest.raises(ConfirmationRefused) as refused:
        NonInteractiveQuestioner(False).confirm("production", "users", ["reverts x"])
    assert refused.value.exit_code == 2


@pytest.mark.parametrize("command", ["repair", "restore", "migrate", "rollback"])
def test_help_mentions_yes(command: str) -> None:
    result = Monorepo(Path.cwd()).cli(command, "--help")
    assert result.code == 0 and "Example:" in result.stdout and "--yes" in result.stdout


def test_no_answer_at_the_prompt_is_a_refusal(
    repo: Monorepo, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-D (end of input) at the typed confirmation: exit 2, one sentence, nothing done."""
    from ncm_migrate.cli import context

    _repo(repo, sqlite_url)
    assert repo.cli("migrate", "--env", "production").code == 0
    before = (tables(sqlite_url), ledger(sqlite_url))
    monkeypatch.setattr(context, "_interactive", lambda: True)
    result = repo.cli("rollback", "users", "--env", "production")  # stdin is empty: EOF
    assert result.code == 2, result.output
    assert "Not confirmed" in result.stderr and "nothing was done" in result.stderr
    assert "Aborted" not in result.output and "Traceback" not in result.output
    assert (tables(sqlite_url), ledger(sqlite_url)) == before


def test_ctrl_c_at_the_prompt_exits_2(repo: Monorepo, sqlite_url: str) -> None:
    """A real terminal (a pty): Ctrl-C while the prompt waits refuses, exit 2, not 1."""
    import contextlib
    import os
    import pty
    import select
    import signal
    import subprocess
    import sys
    import time

    _repo(repo, sqlite_url)
    assert repo.cli("migrate", "--env", "production").code == 0
    before = (tables(sqlite_url), ledger(sqlite_url))
    repo.run("--version")  # writes manage.py
    env = {k: v for k, v in os.environ.items() if not k.startswith("NCM_")}
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, str(repo.root / "manage.py"), "rollback", "users", "--env", "production"],
        cwd=repo.root, env=env, stdin=secondary, stdout=secondary, stderr=secondary,
        # A terminal's process gets SIGINT; one started from a background job inherits it
        # ignored, and Python then installs no KeyboardInterrupt handler.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    os.close(secondary)
    seen = b""
    try:
        while b"to go on" not in seen:
            ready, _, _ = select.select([primary], [], [], 60)
            assert ready, f"no prompt within 60 s: {seen!r}"
            seen += os.read(primary, 4096)
        # What a terminal's Ctrl-C does: SIGINT to the foreground process; pressed again
        # every few seconds, as a user would, and the terminal read all along (a child
        # writing to a full pty blocks).
        deadline = time.monotonic() + 60
        next_press = 0.0
        while proc.poll() is None and time.monotonic() < deadline:
            if time.monotonic() >= next_press:
                proc.send_signal(signal.SIGINT)
                next_press = time.monotonic() + 5
            ready, _, _ = select.select([primary], [], [], 0.2)
            if ready:
                with contextlib.suppress(OSError):  # EIO once the child has gone
                    seen += os.read(primary, 4096)
        code = proc.poll()
        assert code is not None, f"still running 60 s after SIGINT: {seen!r}"
        while True:
            ready, _, _ = select.select([primary], [], [], 1)
            if not ready:
                break
            try:
                chunk = os.read(primary, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(primary)
    text = seen.decode(errors="replace")
    assert code == 2, text
    assert "Not confirmed" in text and "Traceback" not in text and "Aborted" not in text
    assert (tables(sqlite_url), ledger(sqlite_url)) == before
