"""Expire read notifications 30 days after they were read; index unread ones per user."""

revision = "0002_expire_read"
down_revision = "0001_initial"
branch_labels = None
depends_on = None
requires: list[str] = []
migration_type = "index"
transactional = False

from pymongo.database import Database

from ncm_migrate import mongo_ops


def upgrade(db: Database) -> None:
    mongo_ops.create_index(db, "notifications", "read_at", name="ttl_read_at", ttl_s=30 * 24 * 3600)
    mongo_ops.create_index(db, "notifications", [("user_id", 1)], name="ix_unread_by_user",
                           partial={"read_at": {"$exists": False}})


def downgrade(db: Database) -> None:
    mongo_ops.drop_index(db, "notifications", "ix_unread_by_user")
    mongo_ops.drop_index(db, "notifications", "ttl_read_at")


def verify(db: Database) -> None:
    names = set(db["notifications"].index_information())
    assert {"ttl_read_at", "ix_unread_by_user"} <= names, f"indexes missing: {sorted(names)}"
