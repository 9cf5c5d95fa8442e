"""What happens around one run of `migrate` or `rollback`: the settings' hooks before,
after each step and after it (`hooks`), and the webhook told of its outcome (`notify`).

A failing `before_migrate` hook stops the run before anything changes (`HookFailed`,
exit 1); a failing `after_*` hook or a webhook that is down is logged and kept in
`RunCallbacks.failures`, never changing the run's own outcome.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from .config import Settings
from .errors import HookFailed
from .events import Event, Reporter
from .hooks import HookFailure, run_hooks
from .model import Plan, RunContext, StepResult
from .notify import send_webhook
from .urls import redact_known

log = logging.getLogger(__name__)


def step_summary(result: StepResult) -> dict[str, Any]:
    return {"service": result.service, "revision": result.revision,
            "direction": result.direction, "outcome": result.outcome,
            "duration_ms": round(result.duration_ms, 3), "error": result.error}


class RunCallbacks:
    """The hooks and the webhook of one run, one method per moment of it."""

    def __init__(self, settings: Settings, plan: Plan, command: str, ctx: RunContext,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.plan = plan
        self.command = command
        self.ctx = ctx
        self.clock = clock
        self.started = clock()
        self.failures: list[str] = []

    def summary(self, event: str, outcome: str, results: list[StepResult] | None = None,
                error: str | None = None) -> dict[str, Any]:
        """The run's JSON summary, as hooks and the webhook receive it."""
        return {
            "event": event,
            "command": self.command,
            "run_id": self.ctx.run_id or None,  # as on the run's ledger rows and audit lines
            "environment": self.settings.env,
            "actor": self.ctx.actor,
            "host": self.ctx.host,
            "services": self.plan.services(),
            "plan": [{"service": s.service, "revision": s.revision, "direction": s.direction}
                     for s in self.plan.steps],
            "outcome": outcome,
            "error": redact_known(error) if error else None,
            "duration_ms": round((self.clock() - self.started) * 1000, 3),
            "steps": [step_summary(r) for r in results or ()],
        }

    def before(self) -> HookFailed | None:
        """Run the `before_migrate` hooks; the error that stops the run if one failed (the
        webhook is told the run failed)."""
        failed = self._run("before_migrate", self.summary("before_migrate", "pending"))
        if not failed:
            return None
        error = HookFailed(f"{'; '.join(map(str, failed))}; the run did not start, nothing was changed.")
        self.notify([], error)
        return error

    def after_step(self, report: Reporter) -> Reporter:
        """`report`, followed by the `after_step` hooks for each finished step."""
        hooks = self.settings.hooks.after_step

        def reporter(event: Event) -> None:
            report(event)
            if hooks and event.kind == "done" and event.result is not None:
                payload = {**self.summary("after_step", "running"), "step": step_summary(event.result)}
                self._report(self._run("after_step", payload))

        return reporter

    def after(self, results: list[StepResult], error: BaseException | None) -> None:
        """Run `after_migrate` (the run succeeded) or `after_failure` hooks, then notify;
        failures are logged, the run's outcome stays its own."""
        event = "after_failure" if error is not None else "after_migrate"
        payload = self.summary(event, "failed" if error else "succeeded", results,
                               str(error) if error else None)
        self._report(self._run(event, payload))
        self.notify(results, error)

    def notify(self, results: list[StepResult], error: BaseException | None) -> None:
        notify = self.settings.notify
        if not notify.webhook_url:
            return
        payload = self.summary("notify", "failed" if error else "succeeded", results,
                               str(error) if error else None)
        why = send_webhook(notify.webhook_url, payload, timeout_s=notify.timeout_s,
                           retries=notify.retries)
        if why is not None:
            self.failures.append(why)
            log.warning("%s; the run's outcome is unchanged", why)

    def _run(self, event: str, payload: dict[str, Any]) -> list[HookFailure]:
        hooks = getattr(self.settings.hooks, event)
        if not hooks:
            return []
        return run_hooks(event, hooks, payload, root=self.settings.root,
                         timeout_s=self.settings.hooks.timeout_s)

    def _report(self, failed: list[HookFailure]) -> None:
        for failure in failed:
            self.failures.append(str(failure))
            log.warning("%s; the run's outcome is unchanged", failure)
