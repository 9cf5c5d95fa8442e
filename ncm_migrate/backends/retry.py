"""The one retry policy: connecting and health checks only, never a migration.

Exponential backoff with jitter (tenacity), bounded by `connect.retries` attempts after
the first and by `connect.max_wait_s` in total; each retry is logged on one line.
"""

from __future__ import annotations

import logging
import time

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from ..config import ConnectSettings
from ..errors import DatabaseUnreachable
from ..urls import mask_url, password_of, redact
from . import Backend, ConnectFailed

log = logging.getLogger(__name__)


def open_with_retries(backend: Backend, policy: ConnectSettings, max_wait_s: float | None = None) -> None:
    """Open `backend`, retrying while it does not answer; `DatabaseUnreachable` at the end."""
    cfg = backend.config
    masked = mask_url(cfg.database_url)
    secret = password_of(cfg.database_url)
    budget = policy.max_wait_s if max_wait_s is None else max_wait_s
    started = time.monotonic()

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "%s: %s not reachable (attempt %d): %s; retrying in %.1fs",
            cfg.name, masked, state.attempt_number, redact(str(exc), [secret]), delay,
        )

    retrying = Retrying(
        stop=stop_after_attempt(policy.retries + 1) | stop_before_delay(budget),
        wait=wait_random_exponential(multiplier=0.2, max=max(0.2, budget / 4)),
        retry=retry_if_exception(lambda e: isinstance(e, ConnectFailed) and not e.permanent),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        retrying(backend.open)
    except ConnectFailed as exc:
        if exc.permanent:
            raise DatabaseUnreachable(
                f"Service '{cfg.name}': the database at {masked} refused the connection "
                f"({redact(str(exc), [secret])}); not retried: check the user, the password "
                "and the database name."
            ) from None
        if policy.retries == 0:  # one attempt (doctor): no waiting to speak of
            raise DatabaseUnreachable(
                f"Service '{cfg.name}': the database at {masked} is not reachable "
                f"({redact(str(exc), [secret])}); check that it is running."
            ) from None
        raise DatabaseUnreachable(
            f"Service '{cfg.name}': the database at {masked} stayed unreachable after "
            f"{time.monotonic() - started:.1f}s ({redact(str(exc), [secret])}); check that it "
            "is running and that connect.retries / connect.max_wait_s allow it time to start."
        ) from None
