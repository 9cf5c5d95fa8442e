"""Expand: add `display_name` beside `name` and copy it over; both releases work now."""

revision = "0002_add_display_name"
down_revision = "0001_initial"
branch_labels = None
depends_on = None
requires: list[str] = []
migration_type = "schema"
phase = "pre"  # the default: `migrate --phase pre`, before the new code is deployed

import sqlalchemy as sa
from alembic import op


def upgrade() -> None:
    op.add_column("accounts", sa.Column("display_name", sa.String(100), nullable=True))
    op.execute("UPDATE accounts SET display_name = name")


def downgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("display_name")
