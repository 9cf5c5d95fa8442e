"""Backfill one invoice line per existing invoice, in batches."""

revision = "0003_backfill_lines"
down_revision = "0002_invoice_lines"
branch_labels = None
depends_on = None
requires: list[str] = []
migration_type = "data"

import sqlalchemy as sa
from alembic import op

BATCH = 1000
invoices = sa.table("invoices", sa.column("id"), sa.column("amount_cents"))
lines = sa.table(
    "invoice_lines", sa.column("invoice_id"), sa.column("description"), sa.column("amount_cents")
)


def upgrade() -> None:
    bind = op.get_bind()
    last_id = 0
    while True:
        batch = bind.execute(
            sa.select(invoices.c.id, invoices.c.amount_cents)
            .where(invoices.c.id > last_id)
            .where(~sa.exists().where(lines.c.invoice_id == invoices.c.id))
            .order_by(invoices.c.id)
            .limit(BATCH)
        ).all()
        if not batch:
            break
        bind.execute(
            lines.insert(),
            [{"invoice_id": i, "description": "Invoice total", "amount_cents": a} for i, a in batch],
        )
        last_id = batch[-1][0]


def downgrade() -> None:
    op.execute(lines.delete().where(lines.c.description == "Invoice total"))
