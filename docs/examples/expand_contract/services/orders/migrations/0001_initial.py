"""Orders show the account's display name, so they need the expand step first."""

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None
requires = ["accounts:0002_add_display_name"]
migration_type = "schema"

import sqlalchemy as sa
from alembic import op


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("orders")
