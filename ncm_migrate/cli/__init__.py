"""The command line: the only package that imports Typer, prints, or exits.

`application` builds the app from the commands (`inspecting`, `migrating`, `authoring`,
`maintenance`), which parse options, call a verb from `ncm_migrate.commands`, and print
through `output`.
"""

from ..model import StepResult
from .application import app, app_for, main
from .argv import hoist_global_options

__all__ = ["StepResult", "app", "app_for", "hoist_global_options", "main"]
