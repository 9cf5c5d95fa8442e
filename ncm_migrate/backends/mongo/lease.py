"""MongoDB's migration lock: a lease document with an owner and an expiry.

One document per service in `ncm_migration_lock`. Taking it is one atomic
`find_one_and_update` (upsert) that matches only a free, expired or already-owned lease;
a background thread renews it every `lease_s / 3` while it is held, so a killed holder's
lease lapses after `lease_s` and the next runner takes over. Expiry compares the runners'
clocks, which must agree to well within `lease_s`.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError, PyMongoError

from ...ledger import utcnow

log = logging.getLogger(__name__)
COLLECTION = "ncm_migration_lock"


@dataclass(frozen=True)
class Owner:
    """Who holds a lease: a host, a process, and a token unique to one lock attempt."""

    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    token: str = field(default_factory=lambda: secrets.token_hex(12))


class Lease:
    """One runner's hold on the lease document `{_id: name}`."""

    def __init__(
        self, collection: Collection[dict[str, Any]], name: str, lease_s: float, owner: Owner | None = None
    ) -> None:
        self.collection = collection
        self.name = name
        self.lease_s = lease_s
        self.owner = owner or Owner()
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _expiry(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.lease_s)

    def try_acquire(self) -> bool:
        """Take the lease if it is free, expired or ours; False while another runner holds it."""
        now = utcnow()
        try:
            doc = self.collection.find_one_and_update(
                {"_id": self.name,
                 "$or": [{"expires_at": {"$lt": now}}, {"owner.token": self.owner.token}]},
                {"$set": {"owner": asdict(self.owner), "acquired_at": now,
                          "expires_at": self._expiry(now)}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            return False  # the document exists and did not match: someone else's live lease
        return doc is not None and (doc.get("owner") or {}).get("token") == self.owner.token

    def renew(self) -> bool:
        """Push the expiry out by `lease_s`; False when the lease is no longer ours."""
        now = utcnow()
        result = self.collection.update_one(
            {"_id": self.name, "owner.token": self.owner.token},
            {"$set": {"expires_at": self._expiry(now), "renewed_at": now}},
        )
        if result.matched_count != 1:
            self.lost = True
        return not self.lost

    def keep_alive(self) -> None:
        """Renew every `lease_s / 3` in a background thread until `release`."""
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._renew_loop, name=f"ncm-lease-{self.name}", daemon=True
        )
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                if not self.renew():
                    log.warning("the migration lease of '%s' was taken by another runner", self.name)
                    return
            except PyMongoError as exc:
                log.warning("could not renew the migration lease of '%s': %s", self.name, exc)

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, self.lease_s))
            self._thread = None
        try:
            self.collection.delete_one({"_id": self.name, "owner.token": self.owner.token})
        except PyMongoError as exc:
            log.warning("could not release the migration lease of '%s' (it lapses after %gs): %s",
                        self.name, self.lease_s, exc)

    def holder(self) -> str | None:
        """Who holds the lease now and until when, in words; None when it is free."""
        doc = self.collection.find_one({"_id": self.name})
        if doc is None:
            return None
        owner = doc.get("owner") or {}
        expires = doc.get("expires_at")
        until = expires.isoformat(timespec="seconds") if isinstance(expires, datetime) else "?"
        return f"runner on host {owner.get('host', '?')} (pid {owner.get('pid', '?')}), lease until {until}"
