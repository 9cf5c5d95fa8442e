"""What a run tells its caller: progress as it happens (`Event`, through a `Reporter` the
command supplies) and the outcome (`RunReport`). Pure values: the executor never prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from .errors import NcmError
from .model import Plan, Step, StepResult


@dataclass(frozen=True)
class Event:
    """Progress: the plan about to run (`plan`), or one step that started or finished."""

    kind: Literal["plan", "start", "done"]
    step: Step | None = None
    result: StepResult | None = None
    plan: Plan | None = None


Reporter = Callable[[Event], None]


@dataclass
class RunReport:
    """Every step's outcome, and the error that stopped the run, if one did."""

    results: list[StepResult] = field(default_factory=list)
    error: NcmError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None
