#!/usr/bin/env python
"""The monorepo's migration commands: `python manage.py --help`."""

from pathlib import Path

from ncm_migrate.cli import main

if __name__ == "__main__":
    main(root=Path(__file__).resolve().parent)
