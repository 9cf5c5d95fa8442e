"""The one retry policy: connecting and health checks only, never a migration.

`connect.max_wait_s` is the bound on the whole: the `connect.retries` retries after the
first attempt are spread over it with exponential backoff and jitter (tenacity), the last
made as it runs out, and no attempt waits past it (each gets `connect.timeout_s` or what
is left, whichever is less). Each retry is logged on one line.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from tenacity import RetryCallState, Retrying, retry_if_exception

from ..config import ConnectSettings
from ..errors import DatabaseUnreachable, SettingsError
from ..urls import mask_url, password_of, redact
from . import Backend, ConnectFailed

log = logging.getLogger(__name__)

MIN_ATTEMPT_S = 1.0
"""The time kept for the last attempt: none starts with less of the budget left (half
the budget, in a budget shorter than twice this)."""
MIN_INTERVAL_S = 0.05
"""The least wait between two attempts (many retries in a short budget)."""


def backoff(retry: int, retries: int, budget_s: float, max_interval_s: float | None = None) -> float:
    """The wait before retry number `retry` (1-based) of `retries`: exponential, doubling,
    so that the `retries` waits add up to `budget_s`, each with jitter (between three
    quarters of its share and all of it); none longer than `max_interval_s`."""
    doublings = min(retries, 30)
    first = budget_s / float(2**doublings - 1)
    share = max(MIN_INTERVAL_S, first * 2.0 ** min(retry - 1, 30))
    if max_interval_s is not None:
        share = min(share, max_interval_s)
    return share * random.uniform(0.75, 1.0)


def open_with_retries(
    backend: Backend,
    policy: ConnectSettings,
    max_wait_s: float | None = None,
    max_interval_s: float | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Open `backend`, retrying while it does not answer, within `max_wait_s` (default
    `connect.max_wait_s`) in all; `DatabaseUnreachable` at the end."""
    cfg = backend.config
    masked = mask_url(cfg.database_url)
    secret = password_of(cfg.database_url)
    budget = policy.max_wait_s if max_wait_s is None else max_wait_s
    started = clock()
    deadline = started + budget
    last_retry = policy.retries
    reserve = min(MIN_ATTEMPT_S, budget / 2)

    def attempt() -> None:
        left = deadline - clock()
        backend.open(max(reserve, min(policy.timeout_s, left)))

    def wait(state: RetryCallState) -> float:
        left = deadline - clock() - reserve
        if state.attempt_number >= last_retry:  # the last retry: as the budget runs out
            return max(0.0, left)
        return max(0.0, min(left, backoff(state.attempt_number, policy.retries, budget, max_interval_s)))

    def stop(state: RetryCallState) -> bool:
        no_room = deadline - clock() - reserve < MIN_INTERVAL_S  # for a wait and an attempt
        return state.attempt_number > policy.retries or no_room

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "%s: %s not reachable (attempt %d): %s; retrying in %.1fs",
            cfg.name, masked, state.attempt_number, redact(str(exc), [secret]), delay,
        )

    retrying = Retrying(
        stop=stop,
        wait=wait,
        retry=retry_if_exception(lambda e: isinstance(e, ConnectFailed) and not e.permanent),
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )
    try:
        retrying(attempt)
    except ConnectFailed as exc:
        reason = redact(str(exc), [secret])
        if exc.setting:
            raise SettingsError(f"Service '{cfg.name}': {reason}.") from None
        if exc.permanent:
            raise DatabaseUnreachable(
                f"Service '{cfg.name}': the database at {masked} refused the connection "
                f"({reason}); not retried: check the user, the password and the database name."
            ) from None
        if policy.retries == 0:  # one attempt (doctor): no waiting to speak of
            raise DatabaseUnreachable(
                f"Service '{cfg.name}': the database at {masked} is not reachable "
                f"({reason}); check that it is running."
            ) from None
        raise DatabaseUnreachable(
            f"Service '{cfg.name}': the database at {masked} stayed unreachable after "
            f"{clock() - started:.1f}s ({reason}); check that it is running and that "
            "connect.retries / connect.max_wait_s allow it time to start."
        ) from None
