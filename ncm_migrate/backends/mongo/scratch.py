"""A throw-away MongoDB database next to a service's, dropped afterwards (even when the work
in it fails): where `drift` and `check --roundtrip` run a service's revisions."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from pymongo.errors import PyMongoError

from ...model import ServiceConfig
from . import backend

log = logging.getLogger(__name__)


@contextmanager
def scratch_mongo_database(config: ServiceConfig, timeout_s: float) -> Iterator[ServiceConfig]:
    """`config` pointed at a new database on the same server, dropped on the way out."""
    name = f"ncm_scratch_{secrets.token_hex(6)}"
    log.info("%s: building scratch database %s", config.name, name)
    try:
        yield replace(config, database_name=name)
    finally:
        client = backend.client_factory(config.database_url or "", timeout_s)
        try:
            client.drop_database(name)
        except PyMongoError as exc:
            log.warning("could not drop the scratch database %s (%s); drop it by hand", name, exc)
        finally:
            client.close()
