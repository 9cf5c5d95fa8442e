"""Asking for confirmation of destructive work in a protected environment.

One interface, two implementations (as Django's questioner): an interactive one that has
the user type the service's name, through a prompt function the CLI supplies, and a
non-interactive one that refuses unless `--yes` was given. No core code calls `input()`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .errors import ConfirmationRefused
from .linting import DESTRUCTIVE, lint_revision
from .model import Plan, Revision, ServiceConfig

# The user's answer to a question; KeyboardInterrupt or EOFError when none comes.
Prompt = Callable[[str], str]


class Questioner(Protocol):
    def confirm(self, environment: str, service: str, reasons: Sequence[str]) -> None:
        """Return when the work on `service` is confirmed; raise `ConfirmationRefused` if not."""


@dataclass(frozen=True)
class NonInteractiveQuestioner:
    """No terminal: confirmed only by `--yes`."""

    yes: bool = False

    def confirm(self, environment: str, service: str, reasons: Sequence[str]) -> None:
        if self.yes:
            return
        raise ConfirmationRefused(
            f"Environment '{environment}' is protected and service '{service}' would be changed "
            f"destructively ({'; '.join(reasons)}); nothing was done. Pass --yes to confirm."
        )


@dataclass(frozen=True)
class InteractiveQuestioner:
    """A terminal: the user confirms by typing the service's name (or passes `--yes`)."""

    prompt: Prompt
    yes: bool = False

    def confirm(self, environment: str, service: str, reasons: Sequence[str]) -> None:
        if self.yes:
            return
        try:
            answer = self.prompt(
                f"Environment '{environment}' is protected. On service '{service}' this "
                f"{'; '.join(reasons)}.\nType the service name '{service}' to go on"
            )
        except (KeyboardInterrupt, EOFError):
            raise ConfirmationRefused(
                f"Not confirmed (no answer: the prompt was interrupted); nothing was done to "
                f"service '{service}'."
            ) from None
        if answer.strip() != service:
            raise ConfirmationRefused(
                f"Not confirmed (typed {answer.strip()!r}, not '{service}'); nothing was done "
                f"to service '{service}'."
            )


def questioner_for(yes: bool, interactive: bool, prompt: Prompt | None) -> Questioner:
    """The interactive questioner on a terminal with a prompt, else the non-interactive one."""
    if interactive and prompt is not None:
        return InteractiveQuestioner(prompt, yes)
    return NonInteractiveQuestioner(yes)


def plan_reasons(
    plan: Plan,
    revisions: Mapping[str, Mapping[str, Revision]],
    configs: Mapping[str, ServiceConfig],
    root: Path,
    fake: bool,
) -> dict[str, list[str]]:
    """Per service, why `plan` needs confirmation in a protected environment: downgrades,
    upgrades with destructive lint findings (silenced or not), and `--fake`."""
    reasons: dict[str, list[str]] = {}
    for step in plan.steps:
        why = reasons.setdefault(step.service, [])
        if fake and "records steps without running them (--fake)" not in why:
            why.append("records steps without running them (--fake)")
        if step.direction == "down":
            why.append(f"reverts {step.revision}")
            continue
        rev = revisions[step.service][step.revision]
        found = lint_revision(configs[step.service], rev, "error", root, include_allowed=True)
        rules = sorted({f.rule for f in found if f.rule in DESTRUCTIVE})
        if rules:
            why.append(f"applies {step.revision} ({', '.join(rules)})")
    return {svc: why for svc, why in reasons.items() if why}


def confirm_plan(
    questioner: Questioner,
    environment: str,
    plan: Plan,
    revisions: Mapping[str, Mapping[str, Revision]],
    configs: Mapping[str, ServiceConfig],
    root: Path,
    fake: bool,
    also: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Ask about every service the plan changes destructively (and each service `also`
    gives more reasons for), once each, before anything runs."""
    reasons = plan_reasons(plan, revisions, configs, root, fake)
    for service, more in (also or {}).items():
        reasons.setdefault(service, []).extend(more)
    for service, why in reasons.items():
        questioner.confirm(environment, service, why)
