"""An index of each user's sessions: a set `sessions:by_user:<user_id>` of session ids."""

revision = "0002_user_index"
down_revision = "0001_initial"
branch_labels = None
depends_on = None
requires: list[str] = []
migration_type = "data"

import redis
from redis.client import Pipeline

from ncm_migrate.redis_ops import batched_scan_update


def upgrade(r: redis.Redis) -> None:
    def index(pipe: Pipeline, key: bytes) -> None:
        user = r.hget(key, "user_id")
        if user is not None:
            pipe.sadd(b"sessions:by_user:" + user, key.removeprefix(b"sess:"))

    batched_scan_update(r, "sess:*", index, key_type="hash")


def downgrade(r: redis.Redis) -> None:
    batched_scan_update(r, "sessions:by_user:*", lambda pipe, key: pipe.unlink(key))
