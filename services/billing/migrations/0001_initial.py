"""Create invoices, owned by a user of the users service."""

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None
requires = ["users:0001_initial"]
migration_type = "schema"

import sqlalchemy as sa
from alembic import op


def upgrade() -> None:
    op.create_table(
        "invoices",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user_id", sa.Integer, nullable=False, index=True),
        sa.Column("amount_cents", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False, server_default="EUR"),
        sa.Column("issued_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("invoices")
