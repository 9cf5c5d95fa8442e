"""lint on Redis revisions: KEYS, FLUSHDB/FLUSHALL and DEL over a pattern are findings with
their fix in the message, silenced by `# ncm: allow <rule>`; a revision of another service
that imports `redis` is linted for them too."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ncm_migrate import linting as lint
from ncm_migrate.discovery import read_revision
from ncm_migrate.model import BackendName, ServiceConfig

REDIS = "redis://127.0.0.1:6379/3"

# (rule, upgrade body whose LAST line is the dangerous call)
SAMPLES = [
    ("redis-keys", "r.keys('session:*')"),
    ("redis-keys", "r.keys()"),
    ("redis-keys", "names = client.keys(pattern='user:*')"),
    ("redis-keys", "r.execute_command('KEYS', 'user:*')"),
    ("redis-flush", "r.flushdb()"),
    ("redis-flush", "r.flushall(asynchronous=True)"),
    ("redis-flush", "r.execute_command('FLUSHALL')"),
    ("redis-del-pattern", "doomed = list(r.scan_iter(match='tmp:*'))\nr.delete(*doomed)"),
    ("redis-del-pattern", "for key in r.scan_iter(match='tmp:*', count=500):\n    r.unlink(key)"),
    ("redis-del-pattern",
     "with r.pipeline() as pipe:\n    for key in r.scan_iter('tmp:*'):\n        pipe.delete(key)"),
    ("redis-del-pattern", "r.execute_command('DEL', *names)"),
]


def redis_revision_file(upgrade: str = "pass", downgrade: str = "pass", imports: str = "import redis") -> str:
    """A Redis service's revision file: the same header, functions of the client."""

    def body(code: str) -> str:
        return textwrap.indent(textwrap.dedent(code).strip(), "    ")

    return (
        '"""0002_change"""\n\n'
        "revision = '0002_change'\ndown_revision = '0001_initial'\n"
        "branch_labels = None\ndepends_on = None\nrequires = []\nmigration_type = 'data'\n\n"
        f"{imports}\n\n\n"
        f"def upgrade(r: redis.Redis) -> None:\n{body(upgrade)}\n\n\n"
        f"def downgrade(r: redis.Redis) -> None:\n{body(downgrade)}\n"
    )


def _lint(tmp_path: Path, text: str, backend: BackendName = "redis", url: str = REDIS) -> list[lint.Finding]:
    path = tmp_path / "0002_change.py"
    path.write_text(text)
    config = ServiceConfig(name="sessions", root=tmp_path, backend=backend, database_url=url)
    return lint.lint_revision(config, read_revision("sessions", path), "warning", tmp_path)


def _line_of(text: str, code: str) -> int:
    last = code.splitlines()[-1].strip()
    return next(n for n, line in enumerate(text.splitlines(), 1) if line.strip() == last)


@pytest.mark.parametrize(("rule", "code"), SAMPLES)
def test_each_redis_rule_fires_with_its_fix_and_is_silenced_by_its_comment(
    tmp_path: Path, rule: str, code: str
) -> None:
    text = redis_revision_file(code)
    found = _lint(tmp_path, text)
    assert [(f.rule, f.line) for f in found] == [(rule, _line_of(text, code))]
    assert lint.RULES[rule] in found[0].message
    assert "scan_iter" in found[0].message  # the fix
    assert f"# ncm: allow {rule}" in found[0].message

    *head, last = code.splitlines()
    silenced = "\n".join([*head, f"{last}  # ncm: allow {rule}"])
    assert _lint(tmp_path, redis_revision_file(silenced)) == []
    other = "\n".join([*head, f"{last}  # ncm: allow redis-keys-not"])
    assert len(_lint(tmp_path, redis_revision_file(other))) == 1


def test_delete_over_keys_is_two_findings_and_destructive_ones_need_confirmation(tmp_path: Path) -> None:
    text = redis_revision_file("r.delete(*r.keys('tmp:*'))")
    assert sorted(f.rule for f in _lint(tmp_path, text)) == ["redis-del-pattern", "redis-keys"]
    assert {"redis-flush", "redis-del-pattern"} <= lint.DESTRUCTIVE
    assert "redis-keys" not in lint.DESTRUCTIVE


def test_safe_redis_code_and_deletes_in_downgrade_are_not_findings(tmp_path: Path) -> None:
    upgrade = """
        from ncm_migrate import redis_ops
        redis_ops.rename_keys(r, 'sess:*', 'session:*')
        for key in r.scan_iter(match='user:*', count=1000):
            r.hset(key, 'v', 2)
        r.delete('one:key')
        settings = {'a': 1}
        for name in settings.keys():
            r.set(name, 1)
    """
    downgrade = """
        for key in r.scan_iter(match='session:*'):
            r.unlink(key)
    """
    assert _lint(tmp_path, redis_revision_file(upgrade, downgrade)) == []


def test_keys_and_flush_in_downgrade_are_findings(tmp_path: Path) -> None:
    text = redis_revision_file(downgrade="for k in r.keys('a:*'):\n    r.delete(k)\nr.flushdb()")
    found = _lint(tmp_path, text)
    assert [(f.rule, f.line) for f in found] == [
        ("redis-keys", _line_of(text, "for k in r.keys('a:*'):")),
        ("redis-flush", _line_of(text, "r.flushdb()")),
    ]
    assert all(f.message.startswith("in downgrade(): ") for f in found)


@pytest.mark.parametrize("imports", ["import redis", "from redis.client import Redis",
                                     "from ncm_migrate import redis_ops"])
def test_a_sql_revision_that_imports_redis_is_linted_for_redis_rules(tmp_path: Path, imports: str) -> None:
    text = redis_revision_file("cache = redis.Redis()\ncache.flushdb()", imports=imports)
    found = _lint(tmp_path, text, "sql", "sqlite:///app.db")
    assert [f.rule for f in found] == ["redis-flush"]
    # Without the import, `.flushdb()` is not known to be Redis's.
    plain = redis_revision_file("cache = make()\ncache.flushdb()", imports="import os")
    assert _lint(tmp_path, plain, "sql", "sqlite:///app.db") == []
