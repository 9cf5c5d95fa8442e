"""Split invoices into lines; each invoice's amount becomes one line."""

revision = "0002_invoice_lines"
down_revision = "0001_initial"
branch_labels = None
depends_on = None
requires = ["users:0002_add_email"]
migration_type = "schema"

import sqlalchemy as sa
from alembic import op


def upgrade() -> None:
    op.create_table(
        "invoice_lines",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("invoice_id", sa.Integer, sa.ForeignKey("invoices.id", name="fk_lines_invoice"),
                  nullable=False),
        sa.Column("description", sa.String(255), nullable=False),
        sa.Column("amount_cents", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_invoice_lines_invoice_id", "invoice_lines", ["invoice_id"])


def downgrade() -> None:
    op.drop_index("ix_invoice_lines_invoice_id", table_name="invoice_lines")
    op.drop_table("invoice_lines")
