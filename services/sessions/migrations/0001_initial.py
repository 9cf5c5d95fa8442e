"""Sessions expire: a session hash without a TTL gets the default 14 days."""

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None
requires = ["users:0001_initial"]  # a session belongs to a user
migration_type = "data"

import redis
from redis.client import Pipeline

from ncm_migrate.redis_ops import batched_scan_update

TTL_S = 14 * 24 * 3600


def upgrade(r: redis.Redis) -> None:
    def default_ttl(pipe: Pipeline, key: bytes) -> None:
        if r.ttl(key) == -1:
            pipe.expire(key, TTL_S)

    # SCAN in batches of one MULTI/EXEC each, never KEYS; resumes where it stopped.
    batched_scan_update(r, "sess:*", default_ttl)
    r.hset("sessions:config", mapping={"default_ttl_s": TTL_S})


def downgrade(r: redis.Redis) -> None:
    r.delete("sessions:config")


def verify(r: redis.Redis) -> None:
    assert r.hget("sessions:config", "default_ttl_s") == str(TTL_S).encode()
