"""Settings as typed, frozen values: what `settings.py` (the Dynaconf loader) returns and
the rest of the package reads. No Dynaconf here, so the engine runs without it.

One service's settings (`ServiceConfig`) are in `model.py`, beside what the backends take.
"""

from __future__ import annotations

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
    protected: bool = False
    jobs: int = 1
    read_jobs: int = 8
    rollback_on_failure: bool = False
    allow_checksum_drift: bool = False
    lint_severity: Literal["warning", "error"] = "warning"
    lint_squawk: bool = False
    audit_log_path: Path | None = None
    known_envs: tuple[str, ...] = ()
    services_dir: Path = Path("services")
    # maintenance windows: where any are set, destructive revisions (and those declaring
    # `window = True`) run only inside one
    windows: tuple[Window, ...] = ()

    def service(self, name: str) -> ServiceConfig:
        for svc in self.services:
            if svc.name == name:
                return svc
        raise UnknownService(name, [s.name for s in self.services])
