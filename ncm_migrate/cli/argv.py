"""Reading the command line before Typer does: the command word, an option's value, and
global options that follow the command (`manage.py migrate --env staging`).
"""

from __future__ import annotations

from collections.abc import Sequence


def command_word(argv: Sequence[str]) -> str | None:
    """The first argument that is not a global option (or its value)."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _GLOBAL_VALUED:
            i += 2
            continue
        if arg in _GLOBAL_FLAGS or arg.split("=", 1)[0] in _GLOBAL_VALUED:
            i += 1
            continue
        return arg
    return None


def option_value(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


_GLOBAL_FLAGS = {"-v", "-vv", "-vvv", "--verbose", "-q", "--quiet"}


_GLOBAL_VALUED = {"--env", "--settings"}


def hoist_global_options(argv: list[str]) -> list[str]:
    """Let `--env`, `--settings`, `-v` and `-q` follow the command too
    (`manage.py migrate --env staging`), by moving them in front of it."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg in _GLOBAL_FLAGS:
            front.append(arg)
        elif arg in _GLOBAL_VALUED and i + 1 < len(argv):
            front.extend(argv[i : i + 2])
            i += 1
        elif arg.split("=", 1)[0] in _GLOBAL_VALUED and "=" in arg:
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest
