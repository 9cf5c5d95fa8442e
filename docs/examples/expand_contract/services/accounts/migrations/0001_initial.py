"""Accounts, with the column `name` that the next release replaces."""

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None
requires: list[str] = []
migration_type = "schema"

import sqlalchemy as sa
from alembic import op


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("accounts")
