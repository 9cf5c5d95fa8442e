"""An index of each user's sessions: a set `sessions:by_user:<user_id>` of session ids."""

revision = "0002_user_index"
down_revision = "0001_initial"
branch_labels = None
depends_on = None
requires: list[str] = []
migration_type = "data"

import redis


def upgrade(r: redis.Redis) -> None:
    for key in r.scan_iter(match="sess:*", count=1000):
        user = r.hget(key, "user_id")
        if user is not None:
            r.sadd(b"sessions:by_user:" + user, key.removeprefix(b"sess:"))


def downgrade(r: redis.Redis) -> None:
    for key in r.scan_iter(match="sessions:by_user:*", count=1000):
        r.unlink(key)
