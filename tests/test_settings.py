"""Settings: every layer in its place, environments, and each mistake as one clear error
naming the key and the file or variable it came from (exit 2), before any database."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from monorepo import Monorepo

from ncm_migrate.config import Settings
from ncm_migrate.errors import SettingsError, UnknownEnvironment
from ncm_migrate.settings import load_settings


def load(repo: Monorepo, env: str | None = None, **environ: str) -> Settings:
    return load_settings(repo.root, env, environ=environ)


def two_services(repo: Monorepo) -> None:
    repo.table("users", "0001_initial", "users_t")
    repo.table("billing", "0001_initial", "invoices")


# -- layers --------------------------------------------------------------------------


def test_each_layer_overrides_the_one_below(repo: Monorepo) -> None:
    two_services(repo)
    repo.settings('''
        [default]
        jobs = 2
        [default.connect]
        retries = 7
        [development]
        database_url = "sqlite:///var/settings.db"
        [development.lock]
        timeout_s = 11
        [development.services.billing]
        database_url = "sqlite:///var/billing-settings.db"
        version_table = "from_settings"
    ''')
    s = load(repo)
    assert (s.jobs, s.connect.retries, s.lock.timeout_s) == (2, 7, 11.0)
    # Tables merge: keys a layer does not name keep the value from below.
    assert s.connect.max_wait_s == 30.0 and s.lock.lease_s == 30.0
    assert s.service("billing").database_url == f"sqlite:///{repo.root / 'var/billing-settings.db'}"

    repo.write("settings/.secrets.toml", '[development]\njobs = 3\n[development.connect]\nretries = 8\n')
    s = load(repo)
    assert (s.jobs, s.connect.retries, s.lock.timeout_s) == (3, 8, 11.0)

    repo.write("settings/settings.local.toml", "[default]\njobs = 4\n")
    s = load(repo)
    assert (s.jobs, s.connect.retries) == (4, 8)

    # A service's own file: keys relative to the service, for that service only.
    repo.write(
        "services/billing/settings.toml",
        '[default]\nversion_table = "from_service_file"\n'
        '[development]\ndatabase_url = "sqlite:///var/billing-own.db"\n',
    )
    s = load(repo)
    billing, users = s.service("billing"), s.service("users")
    assert billing.version_table == "from_service_file"
    assert billing.database_url == f"sqlite:///{repo.root / 'var/billing-own.db'}"
    assert users.database_url == f"sqlite:///{repo.root / 'var/settings.db'}"
    assert users.version_table == "alembic_version_users"

    # Environment variables win over every file.
    s = load(
        repo,
        NCM_JOBS="5",
        NCM_CONNECT__RETRIES="9",
        NCM_SERVICES__BILLING__DATABASE_URL="sqlite:///var/billing-env.db",
        NCM_SERVICES__BILLING__VERSION_TABLE="from_env",
    )
    assert (s.jobs, s.connect.retries) == (5, 9)
    assert s.service("billing").database_url == f"sqlite:///{repo.root / 'var/billing-env.db'}"
    assert s.service("billing").version_table == "from_env"


def test_database_url_shortcut_gives_each_service_its_version_table(repo: Monorepo) -> None:
    two_services(repo)
    repo.settings('''
        [development]
        database_url = "sqlite:///var/one.db"
        [development.services.users]
        database_url = "sqlite:///var/users.db"
    ''')
    s = load(repo)
    assert s.service("billing").version_table == "alembic_version_billing"
    assert s.service("users").version_table == "alembic_version"


def test_two_services_cannot_share_a_version_table(repo: Monorepo) -> None:
    two_services(repo)
    repo.settings('''
        [development]
        database_url = "sqlite:///var/one.db"
        [development.services.users]
        version_table = "alembic_version"
        [development.services.billing]
        version_table = "alembic_version"
    ''')
    with pytest.raises(SettingsError, match="share one database and the version table"):
        load(repo)


def test_env_flag_and_ncm_env(repo: Monorepo) -> None:
    two_services(repo)
    repo.settings('''
        [development]
        database_url = "sqlite:///var/dev.db"
        [staging]
        database_url = "sqlite:///var/staging.db"
        [production]
        database_url = "sqlite:///var/production.db"
        protected = true
    ''')

    def url(*args: str, env: dict[str, str] | None = None) -> str:
        result = repo.cli(*args, "services", "--json", env=env)
        assert result.code == 0, result.output
        return str(json.loads(result.stdout)[0]["url"])

    assert url().endswith("var/dev.db")
    assert url("--env", "staging").endswith("var/staging.db")
    assert url(env={"NCM_ENV": "staging"}).endswith("var/staging.db")
    # The flag wins over the variable, and may follow the command.
    assert url("--env", "production", env={"NCM_ENV": "staging"}).endswith("var/production.db")
    assert load(repo, "production").protected and not load(repo, "staging").protected


def test_settings_flag_reads_another_folder(repo: Monorepo) -> None:
    two_services(repo)
    repo.settings('[development]\ndatabase_url = "sqlite:///var/default.db"\n')
    repo.write("deploy/settings.toml", '[ci]\ndatabase_url = "sqlite:///var/ci.db"\n')
    result = repo.cli("--settings", str(repo.root / "deploy"), "--env", "ci", "services", "--json")
    assert result.code == 0, result.output
    assert json.loads(result.stdout)[0]["url"].endswith("var/ci.db")
    assert repo.cli("--env", "ci", "services").code == 2  # not an environment of settings/


def test_unknown_environment_lists_the_known_ones(repo: Monorepo) -> None:
    two_services(repo)
    repo.settings('[staging]\ndatabase_url = "sqlite:///x.db"\n[production]\nprotected = true\n')
    repo.write("services/users/settings.toml", '[qa]\ndatabase_url = "sqlite:///qa.db"\n')
    with pytest.raises(UnknownEnvironment) as info:
        load(repo, "prod")
    assert info.value.known == ["development", "production", "qa", "staging"]
    result = repo.cli("--env", "prod", "services")
    assert result.code == 2
    assert "Unknown environment 'prod'" in result.stderr
    assert "development, production, qa, staging" in result.stderr
    assert repo.cli("services", env={"NCM_ENV": "stagin"}).code == 2


# -- mistakes --------------------------------------------------------------------------

SETTINGS_TOML = "settings/settings.toml"


@pytest.mark.parametrize(
    ("where", "text", "environ", "key", "source", "what"),
    [
        pytest.param(
            SETTINGS_TOML, '[development.services.users]\nbackend = "oracle"\n', {},
            "services.users.backend", "settings.toml [development]", "'sql', 'mongo' or 'redis'",
            id="unknown-backend",
        ),
        pytest.param(
            "services/users/settings.toml", '[default]\nbackend = "oracle"\n', {},
            "services.users.backend", "services/users/settings.toml", "'sql', 'mongo' or 'redis'",
            id="unknown-backend-service-file",
        ),
        pytest.param(
            SETTINGS_TOML, "", {"NCM_SERVICES__USERS__BACKEND": "oracle"},
            "services.users.backend", "environment variable NCM_SERVICES__USERS__BACKEND",
            "'sql', 'mongo' or 'redis'", id="unknown-backend-env",
        ),
        pytest.param(
            SETTINGS_TOML, '[development]\ndatabase_url = "postgresql://me@db:port/x"\n', {},
            "database_url", "settings.toml [development]", "not a valid database URL",
            id="malformed-url",
        ),
        pytest.param(
            SETTINGS_TOML, '[development.services.users]\ndatabase_url = "localhost/users"\n', {},
            "services.users.database_url", "settings.toml [development]", "no scheme",
            id="url-without-scheme",
        ),
        pytest.param(
            ".secrets.toml", '[development]\ndatabase_url = "oracle://me@db/x"\n', {},
            "database_url", ".secrets.toml [development]", "'oracle' is not supported",
            id="unsupported-database",
        ),
        pytest.param(
            SETTINGS_TOML, '[development]\njobs = "many"\n', {},
            "jobs", "settings.toml [development]", "a whole number", id="bad-value",
        ),
        pytest.param(
            "settings.local.toml", "[default.lock]\ntimeout_s = -1\n", {},
            "lock.timeout_s", "settings.local.toml [default]", "a number", id="bad-value-local",
        ),
        pytest.param(
            SETTINGS_TOML, "", {"NCM_CONNECT__RETRIES": "lots"},
            "connect.retries", "environment variable NCM_CONNECT__RETRIES", "a whole number",
            id="bad-value-env",
        ),
        pytest.param(
            "services/users/settings.toml", '[default]\nuse_env_py = "yes"\n', {},
            "services.users.use_env_py", "services/users/settings.toml", "true or false",
            id="bad-value-service-file",
        ),
        pytest.param(
            SETTINGS_TOML, "[development]\njbos = 2\n", {},
            "jbos", "settings.toml [development]", "Did you mean 'jobs'", id="unknown-key",
        ),
        pytest.param(
            SETTINGS_TOML, "[default.lock]\ntimeout = 2\n", {},
            "lock.timeout", "settings.toml [default]", "Did you mean 'timeout_s'",
            id="unknown-nested-key",
        ),
        pytest.param(
            "services/users/settings.toml", '[default]\ndatabse_url = "sqlite:///x"\n', {},
            "services.users.databse_url", "services/users/settings.toml", "database_url",
            id="unknown-key-service-file",
        ),
        pytest.param(
            SETTINGS_TOML, "", {"NCM_JBOS": "2"},
            "jbos", "environment variable NCM_JBOS", "Did you mean 'jobs'", id="unknown-key-env",
        ),
        pytest.param(
            SETTINGS_TOML, '[development.services.nobody]\ndatabase_url = "sqlite:///x"\n', {},
            "services.nobody", "settings.toml [development]", "services found: users",
            id="unknown-service",
        ),
        pytest.param(
            SETTINGS_TOML, '[default.services.users]\ndepends_on = ["nobody"]\n', {},
            "services.users.depends_on", "settings.toml [default]", "unknown service 'nobody'",
            id="depends-on-nowhere",
        ),
        pytest.param(
            SETTINGS_TOML, '[default.services.users]\nversion_table = "my table"\n', {},
            "services.users.version_table", "settings.toml [default]", "a table name",
            id="bad-version-table",
        ),
    ],
)
def test_bad_settings_name_key_and_source(
    repo: Monorepo, where: str, text: str, environ: dict[str, str], key: str, source: str,
    what: str,
) -> None:
    repo.table("users", "0001_initial", "users_t")
    base = '[development]\ndatabase_url = "sqlite:///var/ok.db"\n'
    if where == SETTINGS_TOML:
        repo.write(where, text or base)
    else:
        repo.write(SETTINGS_TOML, base)
        repo.write(where if where.startswith("services/") else f"settings/{where}", text)
    result = repo.cli("services", env=environ)
    assert result.code == 2, result.output
    message = result.stderr
    assert message.startswith("Error: ") and "Traceback" not in result.output
    assert f"'{key}'" in message and source in message and what in message
    assert len(message.strip().splitlines()) == 1


def test_source_is_the_layer_that_set_the_key(repo: Monorepo) -> None:
    """A service with its own settings file: a key set in settings.toml is still blamed on
    settings.toml, not on the service's file."""
    repo.table("users", "0001_initial", "users_t")
    repo.write("services/users/settings.toml", '[default]\ndatabase_url = "sqlite:///var/u.db"\n')
    repo.settings('[default.services.users]\nbackend = "oracle"\n')
    with pytest.raises(SettingsError) as info:
        load(repo)
    assert "settings/settings.toml [default]" in str(info.value)
    assert "services/users/settings.toml" not in str(info.value)


@pytest.mark.parametrize("where", ["settings/settings.toml", "settings/.secrets.toml",
                                   "services/users/settings.toml"])
def test_invalid_toml_names_the_file_and_line(repo: Monorepo, where: str) -> None:
    repo.table("users", "0001_initial", "users_t")
    repo.write("settings/settings.toml", '[development]\ndatabase_url = "sqlite:///x.db"\n')
    repo.write(where, textwrap.dedent("""
        [development]
        jobs = 3
        [development.lock
    """))
    result = repo.cli("services")
    assert result.code == 2, result.output
    assert str(repo.root / where) in result.stderr and "line 4" in result.stderr


# -- services without a database -------------------------------------------------------


def test_service_without_database_is_left_out_with_one_line(repo: Monorepo, sqlite_url: str) -> None:
    two_services(repo)
    repo.urls({"users": sqlite_url})
    result = repo.cli("migrate")
    assert result.code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if "billing" in line]
    assert lines == ["skipping service 'billing': no database_url in environment 'development'"]
    assert "billing" not in result.stdout

    status = repo.cli("showmigrations")
    assert status.code == 0 and "users" in status.stdout and "billing" not in status.stdout
    assert "billing" in status.stderr

    named = repo.cli("migrate", "billing")
    assert named.code == 2
    assert "'billing'" in named.stderr and "no database_url in environment 'development'" in named.stderr
    assert repo.cli("showmigrations", "billing").code == 2
    assert repo.cli("history", "billing").code == 2


def test_disabled_service_is_left_out(repo: Monorepo, sqlite_url: str) -> None:
    two_services(repo)
    repo.settings(f'''
        [development]
        database_url = "{sqlite_url}"
        [development.services.billing]
        enabled = false
    ''')
    result = repo.cli("migrate")
    assert result.code == 0, result.output
    assert "skipping service 'billing': disabled in environment 'development'" in result.stderr
    services = json.loads(repo.cli("services", "--json").stdout)
    assert [(s["name"], s["enabled"]) for s in services] == [("billing", False), ("users", True)]


def test_settings_are_checked_before_any_database(repo: Monorepo, tmp_path: Path) -> None:
    """A mistake anywhere stops the run before the database (a fresh SQLite file) exists."""
    two_services(repo)
    db = tmp_path / "never.db"
    repo.settings(f'''
        [development]
        database_url = "sqlite:///{db}"
        [development.services.billing]
        naming_convention = "fk_%(table_name)s"
    ''')
    result = repo.cli("migrate")
    assert result.code == 2
    assert "services.billing.naming_convention" in result.stderr
    assert not db.exists()


def test_shared_database_url_is_only_for_services_of_its_kind(repo: Monorepo, tmp_path: Path) -> None:
    """A service that declares `backend = "mongo"` does not take a shared SQL URL: it is
    left out with a clear line instead of failing the settings."""
    repo.table("users", "0001_a", "t")
    repo.service("events")
    repo.write("services/events/settings.toml", '[default]\nbackend = "mongo"\n')
    repo.settings(f'[development]\ndatabase_url = "sqlite:///{tmp_path / "one.db"}"\n')
    found = {s.name: s for s in load_settings(repo.root).services}
    assert found["users"].database_url is not None
    assert found["events"].backend == "mongo"
    assert found["events"].skip_reason == "no database_url in environment 'development'"


@pytest.mark.parametrize("text", ['jobs = "many"\n', '[services.users]\ndatabase_url = "sqlite://"\n'])
def test_a_setting_outside_an_environment_section_is_an_error(repo: Monorepo, text: str) -> None:
    repo.table("users", "0001_a", "t")
    repo.settings('[development.services.users]\ndatabase_url = "sqlite://"\n')
    repo.write("settings/settings.local.toml", text)
    with pytest.raises(SettingsError, match="outside an environment section"):
        load_settings(repo.root)


# -- environment names -----------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def test_a_misspelt_environment_section_is_warned_about(repo: Monorepo, tmp_path: Path) -> None:
    """`[prodution]` holds production's `protected`, so production itself is unprotected:
    both the near name and production's lack of settings of its own are one line each."""
    repo.table("users", "0001_initial", "users_t")
    repo.settings("[prodution]\nprotected = true\njobs = 4\n")
    repo.write("settings/.secrets.toml",
               f'[production.services.users]\ndatabase_url = "sqlite:///{tmp_path / "p.db"}"\n')
    result = repo.cli("--env", "production", "services")
    assert result.code == 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    assert "Environments 'production' and 'prodution' differ by one letter" in lines[0]
    assert "'production' has no settings of its own besides services" in lines[1]
    # Whichever environment is chosen, the near names are worth a line (once a process:
    # the settings are read several times in one command).
    other = repo.run("--env", "prodution", "services")
    assert other.code == 0 and other.stderr.count("differ by one letter") == 1, other.output
    assert not load(repo, "production").protected  # a warning, not an error


@pytest.mark.parametrize(
    ("a", "b", "near"),
    [
        ("prodution", "production", True),  # a letter dropped
        ("porduction", "production", True),  # two neighbours swapped
        ("productiom", "production", True),  # a letter changed
        ("stagingg", "staging", True),  # a letter added
        ("eu1", "eu2", False),  # numbered siblings, not typos
        ("staging", "staging2", False),
        ("prod", "production", False),
        ("production", "production", False),
    ],
)
def test_environments_one_edit_apart(a: str, b: str, near: bool) -> None:
    from ncm_migrate.environments import one_edit_apart

    assert one_edit_apart(a, b) is near and one_edit_apart(b, a) is near


def test_a_correct_settings_file_gives_no_warning(repo: Monorepo, tmp_path: Path) -> None:
    repo.table("users", "0001_initial", "users_t")
    repo.settings("[production]\nprotected = true\n")
    repo.write("settings/.secrets.toml",
               f'[production.services.users]\ndatabase_url = "sqlite:///{tmp_path / "p.db"}"\n')
    result = repo.cli("--env", "production", "services")
    assert result.code == 0 and result.stderr == "", result.output


@pytest.mark.parametrize("env", ["development", "test", "staging", "production", "docker"])
def test_the_projects_own_settings_give_no_warning(repo: Monorepo, env: str) -> None:
    for name in ("users", "billing", "catalog", "notifications", "sessions"):
        repo.service(name)
    repo.settings((REPO / "settings" / "settings.toml").read_text())
    result = repo.cli("--env", env, "services")
    assert result.code == 0, result.output
    assert "differ by one letter" not in result.stderr
    assert "settings of its own" not in result.stderr


def test_an_empty_environment_name_is_an_error(repo: Monorepo, tmp_path: Path) -> None:
    repo.table("users", "0001_initial", "users_t")
    repo.settings(f'[development]\ndatabase_url = "sqlite:///{tmp_path / "dev.db"}"\n')
    flag = repo.cli("--env", "", "migrate")
    assert flag.code == 2 and "--env" in flag.stderr and "empty" in flag.stderr, flag.output
    variable = repo.cli("migrate", env={"NCM_ENV": ""})
    assert variable.code == 2 and "NCM_ENV" in variable.stderr, variable.output
    assert not (tmp_path / "dev.db").exists()
    with pytest.raises(SettingsError, match="empty"):
        load(repo, "")


def test_a_near_miss_environment_is_suggested(repo: Monorepo) -> None:
    repo.table("users", "0001_initial", "users_t")
    repo.settings("[production]\nprotected = true\n[staging]\njobs = 2\n")
    result = repo.cli("--env", "prodution", "services")
    assert result.code == 2
    assert "Unknown environment 'prodution'" in result.stderr
    assert "Did you mean 'production'?" in result.stderr
    assert "Did you mean" not in repo.cli("--env", "qa", "services").stderr


@pytest.mark.parametrize(
    ("name", "what"),
    [
        pytest.param("e" * 65, "65 characters long", id="too-long"),
        pytest.param("a/b", "not a valid name", id="slash"),
        pytest.param("..", "not a valid name", id="dot-dot"),
        pytest.param("../escape", "not a valid name", id="climbs-out"),
        pytest.param("with space", "not a valid name", id="space"),
    ],
)
@pytest.mark.parametrize("how", ["--env", "NCM_ENV"])
def test_an_unsafe_or_overlong_environment_name_is_refused(
    repo: Monorepo, tmp_path: Path, name: str, what: str, how: str
) -> None:
    """Even when a settings section of that name exists: the name becomes part of folders
    (backup.dir/<env>/) and of the ledger's 64-character environment column."""
    repo.table("users", "0001_initial", "users_t")
    db = tmp_path / "never.db"
    repo.settings(f'["{name}"]\ndatabase_url = "sqlite:///{db}"\n')
    if how == "--env":
        result = repo.cli("--env", name, "migrate")
    else:
        result = repo.cli("migrate", env={"NCM_ENV": name})
    assert result.code == 2, result.output
    assert how in result.stderr and what in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1
    assert not db.exists()  # refused before any database


def test_the_longest_environment_name_is_accepted(repo: Monorepo, tmp_path: Path) -> None:
    repo.table("users", "0001_initial", "users_t")
    name = "e" * 64
    repo.settings(f'[{name}]\njobs = 1\ndatabase_url = "sqlite:///{tmp_path / "ok.db"}"\n')
    assert repo.cli("--env", name.upper(), "migrate").code == 0


def test_an_overlong_actor_is_refused_before_any_database(repo: Monorepo, tmp_path: Path) -> None:
    from monorepo import ledger

    repo.table("users", "0001_initial", "users_t")
    db = tmp_path / "actor.db"
    repo.settings(f'[development]\ndatabase_url = "sqlite:///{db}"\n')
    result = repo.cli("migrate", env={"NCM_ACTOR": "a" * 129})
    assert result.code == 2, result.output
    assert "NCM_ACTOR" in result.stderr and "128" in result.stderr
    assert not db.exists()
    with pytest.raises(SettingsError, match="NCM_ACTOR"):
        load(repo, NCM_ACTOR="a" * 129)
    longest = "a" * 128
    assert repo.cli("migrate", env={"NCM_ACTOR": longest}).code == 0
    assert [row["actor"] for row in ledger(f"sqlite:///{db}")] == [longest]


# -- secrets ---------------------------------------------------------------------------

SECRET = "Zq9-not-for-git-4471"


@pytest.mark.parametrize(
    ("where", "text", "key", "variable"),
    [
        pytest.param(SETTINGS_TOML, f'[production.backup]\nencryption_key = "{SECRET}"\n',
                     "backup.encryption_key", "NCM_BACKUP__ENCRYPTION_KEY", id="encryption-key"),
        pytest.param(SETTINGS_TOML,
                     f'[default.notify]\nwebhook_url = "https://hooks.example.com/T0/{SECRET}"\n',
                     "notify.webhook_url", "NCM_NOTIFY__WEBHOOK_URL", id="webhook-url"),
        pytest.param(SETTINGS_TOML,
                     f'[production.services.users]\n'
                     f'database_url = "postgresql+psycopg://app:{SECRET}@db/users"\n',
                     "services.users.database_url", "NCM_SERVICES__USERS__DATABASE_URL",
                     id="service-url"),
        pytest.param(SETTINGS_TOML, f'[staging]\ndatabase_url = "mongodb://app:{SECRET}@db/app"\n',
                     "database_url", "NCM_DATABASE_URL", id="shared-url"),
        pytest.param(SETTINGS_TOML,
                     f'[staging]\ndatabase_url = "@jinja mysql+pymysql://app:{SECRET}@'
                     '{{ env.get(\'DB_HOST\', \'db\') }}/app"\n',
                     "database_url", "NCM_DATABASE_URL", id="template-with-a-written-password"),
        pytest.param("services/users/settings.toml",
                     f'[production]\ndatabase_url = "mysql+pymysql://app:{SECRET}@db/users"\n',
                     "services.users.database_url", "NCM_SERVICES__USERS__DATABASE_URL",
                     id="service-file-url"),
        pytest.param("services/users/settings.toml",
                     f'[default]\nbackend = "redis://:{SECRET}@cache:6379/0"\n',
                     "services.users.backend", "NCM_SERVICES__USERS__BACKEND",
                     id="service-file-url-in-another-key"),
    ],
)
def test_a_secret_in_a_committed_settings_file_is_refused(
    repo: Monorepo, tmp_path: Path, where: str, text: str, key: str, variable: str
) -> None:
    """Whichever environment is chosen (the file is committed either way), with the key,
    the file and where the secret belongs instead, and never the secret."""
    repo.table("users", "0001_initial", "users_t")
    db = tmp_path / "dev.db"
    base = f'[development]\ndatabase_url = "sqlite:///{db}"\n'
    repo.write(SETTINGS_TOML, base + text if where == SETTINGS_TOML else base)
    if where != SETTINGS_TOML:
        repo.write(where, text)
    for args in (("services",), ("-vv", "migrate")):
        result = repo.cli(*args)
        assert result.code == 2, result.output
        message = result.stderr
        assert f"'{key}'" in message and str(repo.root / where) in message, message
        assert "settings/.secrets.toml" in message and variable in message
        assert SECRET not in result.output and "Traceback" not in result.output
        assert len(message.strip().splitlines()) == 1
    assert not db.exists()


def test_secrets_are_taken_from_the_secrets_layer_and_variables(repo: Monorepo) -> None:
    repo.table("users", "0001_initial", "users_t")
    repo.settings(
        "[production]\nprotected = true\n"
        # The project's own way: a template that reads the password at load time.
        "[staging.services.users]\ndatabase_url = \"@jinja postgresql+psycopg://app:"
        "{{ env.get('NCM_TEST_UNSET_PW', '') }}@db/users\"\n"
    )
    url = f"postgresql+psycopg://app:{SECRET}@db/users"
    repo.write(
        "settings/.secrets.toml",
        f'[production.backup]\nencryption_key = "{SECRET}"\n'
        f'[production.services.users]\ndatabase_url = "{url}"\n',
    )
    s = load(repo, "production")
    assert s.backup.encryption_key == SECRET and s.service("users").database_url == url
    assert load(repo, "staging").service("users").database_url == "postgresql+psycopg://app:@db/users"

    repo.write("settings/.secrets.toml", "")
    repo.write("settings/settings.local.toml", f'[production.backup]\nencryption_key = "{SECRET}"\n')
    assert load(repo, "production").backup.encryption_key == SECRET

    repo.write("settings/settings.local.toml", "")
    s = load(repo, "production", NCM_BACKUP__ENCRYPTION_KEY=SECRET,
             NCM_SERVICES__USERS__DATABASE_URL=url)
    assert s.backup.encryption_key == SECRET and s.service("users").database_url == url
    result = repo.cli("--env", "production", "services", env={"NCM_SERVICES__USERS__DATABASE_URL": url})
    assert result.code == 0 and SECRET not in result.output
