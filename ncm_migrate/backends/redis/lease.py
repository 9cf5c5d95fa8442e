"""Redis's migration lock: a lease, `SET <prefix><svc>:lock <owner> NX PX <lease>`.

The value names its holder (a token unique to one lock attempt, the host and the pid). A
background thread renews it every `lease_s / 3` while it is held, so a killed holder's lease
lapses after `lease_s` and the next runner takes over; renewing and releasing compare the
value and act in one Lua script, so only the owner ever extends or deletes it. The server's
clock alone times the lease: the runners' clocks do not matter.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading

import redis

log = logging.getLogger(__name__)

# Extend / delete the lease only while it holds our value (compare-and-act in one step).
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def owner_value() -> str:
    """`<token> <host> <pid>`: unique to one lock attempt, and readable."""
    return f"{secrets.token_hex(12)} {socket.gethostname()} {os.getpid()}"


class RedisLease:
    """One runner's hold on the lease key `key`."""

    def __init__(self, r: redis.Redis, key: str, lease_s: float, value: str | None = None) -> None:
        self.r = r
        self.key = key
        self.lease_s = lease_s
        self.value = value or owner_value()
        self.lost = False
        self._renew = r.register_script(_RENEW)
        self._release = r.register_script(_RELEASE)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def _ms(self) -> int:
        return max(1, int(self.lease_s * 1000))

    def try_acquire(self) -> bool:
        """Take the lease if it is free (or already ours); False while another runner holds it."""
        if self.r.set(self.key, self.value, nx=True, px=self._ms):
            return True
        return self.renew(quiet=True)

    def renew(self, quiet: bool = False) -> bool:
        """Push the expiry out by `lease_s`; False when the lease is no longer ours."""
        if int(self._renew(keys=[self.key], args=[self.value, self._ms])) == 1:
            return True
        if not quiet:
            self.lost = True
        return False

    def keep_alive(self) -> None:
        """Renew every `lease_s / 3` in a background thread until `release`."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name=f"ncm-lease-{self.key}",
                                        daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                if not self.renew():
                    log.warning("the migration lease %s was taken by another runner", self.key)
                    return
            except redis.RedisError as exc:
                log.warning("could not renew the migration lease %s: %s", self.key, exc)

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, self.lease_s))
            self._thread = None
        try:
            self._release(keys=[self.key], args=[self.value])
        except redis.RedisError as exc:
            log.warning("could not release the migration lease %s (it lapses after %gs): %s",
                        self.key, self.lease_s, exc)

    def holder(self) -> str | None:
        """Who holds the lease now and for how long, in words; None when it is free."""
        value, ttl = self.r.get(self.key), int(self.r.pttl(self.key))
        if value is None:
            return None
        text = value.decode() if isinstance(value, bytes) else str(value)
        _token, _, rest = text.partition(" ")
        host, _, pid = rest.partition(" ")
        lapses = f"{ttl / 1000:.1f}s" if ttl >= 0 else "?"
        return f"runner on host {host or '?'} (pid {pid or '?'}), lease lapsing in {lapses}"
