"""Seed the message templates every installation needs (idempotent: upserts by _id)."""

revision = "0003_seed_templates"
down_revision = "0002_expire_read"
branch_labels = None
depends_on = None
requires: list[str] = []
migration_type = "seed"
transactional = False

from pymongo.database import Database

from ncm_migrate import mongo_ops

TEMPLATES: list[dict[str, object]] = [
    {"_id": "welcome", "subject": "Welcome!", "body": "Hello {name}, welcome aboard."},
    {"_id": "password_reset", "subject": "Reset your password", "body": "Follow {link}."},
]


def upgrade(db: Database) -> None:
    mongo_ops.seed(db, "templates", TEMPLATES, key="_id")


def downgrade(db: Database) -> None:
    mongo_ops.unseed(db, "templates", TEMPLATES, key="_id")
