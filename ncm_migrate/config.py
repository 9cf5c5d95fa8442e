"""Settings as typed, frozen values: what `settings.py` (the Dynaconf loader) returns and
the rest of the package reads. No Dynaconf here, so the engine runs without it.

One service's settings (`ServiceConfig`) are in `model.py`, beside what the backends take.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import UnknownService
from .model import ServiceConfig
from .windows import Window


@dataclass(frozen=True)
class ConnectSettings:
    """Connecting and staying connected: `retries` attempts after the first, spread over
    `max_wait_s` in total; `timeout_s` per attempt; `read_timeout_s` for one wait on the
    server once connected (0: none); `keepalive_s` of silence before TCP keepalive probes
    (0: the system's), which also bounds unacknowledged data (TCP user timeout)."""

    retries: int = 5
    max_wait_s: float = 30.0
    timeout_s: float = 5.0
    read_timeout_s: float = 0.0
    keepalive_s: float = 30.0


@dataclass(frozen=True)
class LockSettings:
    """The migration lock: how long to wait for it, and a MongoDB lease's length."""

    timeout_s: float = 60.0
    lease_s: float = 30.0


@dataclass(frozen=True)
class DdlSettings:
    """How a step waits on the locks its statements take (`ddl.*`): `lock_timeout_ms` per
    lock wait and `statement_timeout_ms` per statement (0: none, `None`: the server's own),
    and a step whose lock wait ran out (or that a deadlock picked) retried up to `retries`
    times within `retry_budget_s` seconds from its first attempt."""

    lock_timeout_ms: int | None = 5000
    statement_timeout_ms: int | None = 0
    retries: int = 5
    retry_budget_s: float = 60.0


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "min": 60_000.0, "h": 3_600_000.0,
            "d": 86_400_000.0}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(us|ms|s|min|h|d)?\s*")


def duration_ms(value: object) -> int | None:
    """A timeout as PostgreSQL writes one (`"2s"`, `"500ms"`, `"1min"`, `"0"`) in whole
    milliseconds; -1 for `""` (the server's own value, not set); None if it is not one. A
    bare number other than 0 is not one: PostgreSQL reads it as milliseconds, ncm-migrate's
    other `*_s` settings as seconds, so `5` is refused rather than guessed."""
    if value == "":
        return -1
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str):
        return None
    found = _DURATION.fullmatch(value)
    if found is None or (found.group(2) is None and float(found.group(1)) != 0):
        return None
    ms = float(found.group(1)) * _UNIT_MS[found.group(2) or "ms"]
    return 0 if ms == 0 else max(1, math.ceil(ms))


DURATION_HINT = ('a duration with its unit, such as "2s", "500ms" or "1min" ("0" for none, "" '
                 "for the server's own)")


@dataclass(frozen=True)
class BackupSettings:
    """Backups: whether `migrate` takes one first, where, and the encryption key."""

    before_migrate: bool = False
    dir: Path = Path("var/backups")
    encryption_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Settings:
    """Everything ncm-migrate reads from settings, for one environment."""

    root: Path
    env: str
    services: tuple[ServiceConfig, ...]
    connect: ConnectSettings = ConnectSettings()
    lock: LockSettings = LockSettings()
    backup: BackupSettings = BackupSettings()
    ddl: DdlSettings = DdlSettings()
    protected: bool = False
    jobs: int = 1
    read_jobs: int = 8
    rollback_on_failure: bool = False
    allow_checksum_drift: bool = False
    lint_severity: Literal["warning", "error"] = "warning"
    lint_squawk: bool = False
    squawk_pg_version: str | None = None
    audit_log_path: Path | None = None
    known_envs: tuple[str, ...] = ()
    services_dir: Path = Path("services")
    hooks: HookSettings = field(default_factory=lambda: HookSettings())
    notify: NotifySettings = field(default_factory=lambda: NotifySettings())
    # maintenance windows: where any are set, destructive revisions (and those declaring
    # `window = True`) run only inside one
    windows: tuple[Window, ...] = ()

    def service(self, name: str) -> ServiceConfig:
        for svc in self.services:
            if svc.name == name:
                return svc
        raise UnknownService(name, [s.name for s in self.services])


@dataclass(frozen=True)
class Hook:
    """One hook: a command run without a shell (`argv`), or a Python callable (`call`,
    `module:function`, imported with the project's root on `sys.path`)."""

    argv: tuple[str, ...] = ()
    call: str | None = None

    def __str__(self) -> str:
        return self.call or " ".join(self.argv)


@dataclass(frozen=True)
class HookSettings:
    """Hooks run around `migrate` and `rollback` (`before_migrate`, `after_step`,
    `after_migrate`, `after_failure`) and after `makemigrations` writes a file
    (`after_write`), each given `timeout_s` seconds."""

    before_migrate: tuple[Hook, ...] = ()
    after_step: tuple[Hook, ...] = ()
    after_migrate: tuple[Hook, ...] = ()
    after_failure: tuple[Hook, ...] = ()
    after_write: tuple[Hook, ...] = ()
    timeout_s: float = 60.0


@dataclass(frozen=True)
class NotifySettings:
    """The webhook told of each run's outcome (a secret: kept out of repr and output)."""

    webhook_url: str | None = field(default=None, repr=False)
    timeout_s: float = 5.0
    retries: int = 2
