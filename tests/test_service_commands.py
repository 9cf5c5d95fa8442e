"""A service's own commands: services/<svc>/commands/<name>.py as `manage.py <svc>:<name>`."""

from __future__ import annotations

import textwrap

from monorepo import CliResult, Monorepo
from typer.testing import CliRunner

from ncm_migrate import cli
from ncm_migrate.service_commands import find_service_commands

GREET = '''
    """Greet someone from the users service."""

    import typer


    def main(name: str = "world", shout: bool = False) -> None:
        text = f"hello {name}"
        typer.echo(text.upper() if shout else text)
'''

REPORT = '''
    """Reports about users."""

    import typer

    app = typer.Typer()


    @app.command()
    def count(table: str, limit: int = 3) -> None:
        """Count rows."""
        typer.echo(f"counting {table} up to {limit}")
        raise typer.Exit(3 if table == "missing" else 0)


    @app.command()
    def summary() -> None:
        typer.echo("summary!")
'''


def with_commands(repo: Monorepo) -> None:
    repo.service("users")
    repo.service("billing")
    repo.write("services/users/commands/greet.py", textwrap.dedent(GREET))
    repo.write("services/users/commands/report.py", textwrap.dedent(REPORT))
    repo.write("services/users/commands/_helpers.py", "X = 1\n")
    repo.write("services/billing/commands/explode.py",
               '"""Fails to import."""\nraise RuntimeError("broken module")\n')
    repo.write("services/billing/commands/nothing.py", '"""Has neither app nor main."""\nVALUE = 1\n')
    repo.settings("[default]\n")


def invoke(repo: Monorepo, *args: str) -> CliResult:
    """In process, through the same app `main()` builds."""
    argv = cli.hoist_global_options(list(args))
    result = CliRunner().invoke(cli.app_for(repo.root, argv), argv, catch_exceptions=False,
                                obj=repo.root)
    return CliResult(result.exit_code, result.stdout, result.stderr)


def test_discovery_reads_names_and_help_without_importing(repo: Monorepo) -> None:
    with_commands(repo)
    found = {c.full_name: c for c in find_service_commands(repo.root)}
    assert set(found) == {"users:greet", "users:report", "billing:explode", "billing:nothing"}
    assert found["users:greet"].help == "Greet someone from the users service."
    # explode.py raises on import: reading its help did not import it.
    assert found["billing:explode"].help == "Fails to import."


def test_listed_in_help_and_run_through_manage_py(repo: Monorepo) -> None:
    with_commands(repo)
    listed = repo.run("--help")
    assert listed.code == 0, listed.output
    for name, help_text in [("users:greet", "Greet someone"), ("users:report", "Reports about users"),
                            ("billing:explode", "Fails to import")]:
        assert name in listed.stdout and help_text in listed.stdout
    assert "Service commands" in listed.stdout
    assert "_helpers" not in listed.stdout

    greet = repo.run("users:greet", "--name", "Ada", "--shout")
    assert greet.code == 0, greet.output
    assert greet.stdout.strip() == "HELLO ADA"


def test_function_and_typer_app_commands(repo: Monorepo) -> None:
    with_commands(repo)
    assert invoke(repo, "users:greet").stdout.strip() == "hello world"
    own_help = invoke(repo, "users:greet", "--help")
    assert own_help.code == 0 and "--shout" in own_help.stdout and "--name" in own_help.stdout

    count = invoke(repo, "users:report", "count", "users", "--limit", "5")
    assert count.code == 0 and count.stdout.strip() == "counting users up to 5"
    assert invoke(repo, "users:report", "summary").stdout.strip() == "summary!"
    assert invoke(repo, "users:report", "count", "missing").code == 3
    sub_help = invoke(repo, "users:report", "--help")
    assert sub_help.code == 0 and "count" in sub_help.stdout and "summary" in sub_help.stdout
    # Global options may still follow the command.
    assert invoke(repo, "users:greet", "-v", "--name", "Bo").stdout.strip() == "hello Bo"


def test_broken_commands_are_clear_errors(repo: Monorepo) -> None:
    with_commands(repo)
    explode = invoke(repo, "billing:explode")
    assert explode.code == 2
    assert "billing:explode" in explode.stderr and "broken module" in explode.stderr
    assert "Traceback" not in explode.output
    nothing = invoke(repo, "billing:nothing")
    assert nothing.code == 2 and "neither `app`" in nothing.stderr
    unknown = invoke(repo, "users:nope")
    assert unknown.code == 2


def test_built_in_commands_do_not_load_service_commands(repo: Monorepo) -> None:
    with_commands(repo)
    assert cli.app_for(repo.root, ["services"]) is cli.app
    assert cli.app_for(repo.root, ["--env", "staging", "migrate"]) is cli.app
    assert cli.app_for(repo.root, ["users:greet"]) is not cli.app
    assert cli.app_for(repo.root, []) is not cli.app


def test_the_combined_app_lists_the_same_commands_first(repo: Monorepo) -> None:
    """`app_for` builds a fresh app through Typer's public decorators (not by copying the
    app's `registered_*` lists): the built-in commands in the same order, then the
    service commands."""
    from pathlib import Path

    import typer

    with_commands(repo)
    app = typer.main.get_command(cli.app)
    built_in = app.list_commands(typer.Context(app))
    full = typer.main.get_command(cli.app_for(repo.root, []))
    names = full.list_commands(typer.Context(full))
    assert names[: len(built_in)] == built_in
    assert set(names[len(built_in):]) == {"users:greet", "users:report", "billing:explode", "billing:nothing"}
    source = "".join(p.read_text() for p in (Path(cli.__file__).parent).glob("*.py"))
    assert "registered_" not in source
