"""The command line: the only package that imports Typer, prints, or exits."""

from ..model import StepResult
from .application import app, app_for, hoist_global_options, main

__all__ = ["StepResult", "app", "app_for", "hoist_global_options", "main"]
