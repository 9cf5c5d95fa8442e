"""Notifications sent to users, validated by the server."""

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None
requires = ["users:0002_add_email"]  # notifications are addressed to users' email addresses
migration_type = "schema"
transactional = False

from pymongo.database import Database

from ncm_migrate import mongo_ops

SCHEMA = mongo_ops.json_schema(
    {
        "user_id": {"bsonType": ["int", "long"]},
        "email": {"bsonType": "string", "pattern": "^[^@]+@[^@]+$"},
        "body": {"bsonType": "string"},
        "created_at": {"bsonType": "date"},
    },
    required=["user_id", "email", "body", "created_at"],
)


def upgrade(db: Database) -> None:
    mongo_ops.create_collection(db, "notifications", SCHEMA)
    mongo_ops.create_index(db, "notifications", [("user_id", 1), ("created_at", -1)],
                           name="ix_user_created")


def downgrade(db: Database) -> None:
    mongo_ops.drop_collection(db, "notifications")


def verify(db: Database) -> None:
    assert "notifications" in db.list_collection_names(), "notifications is missing"
