"""Give every notification a delivery channel: email, for those sent before channels."""

revision = "0004_backfill_channel"
down_revision = "0003_seed_templates"
branch_labels = None
depends_on = None
requires: list[str] = []
migration_type = "data"
transactional = False

from pymongo.database import Database

from ncm_migrate import mongo_ops


def upgrade(db: Database) -> None:
    # In batches by _id: bounded memory however many notifications there are.
    mongo_ops.batched_update(db, "notifications", {"$set": {"channel": "email"}},
                             filter={"channel": {"$exists": False}}, batch_size=1000)


def downgrade(db: Database) -> None:
    mongo_ops.batched_update(db, "notifications", {"$unset": {"channel": ""}},
                             filter={"channel": "email"}, batch_size=1000)


def verify(db: Database) -> None:
    left = db["notifications"].count_documents({"channel": {"$exists": False}})
    assert left == 0, f"{left} notifications have no channel"
