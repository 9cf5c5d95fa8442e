"""Seed the starter products (idempotent: runs twice without duplicates)."""

revision = "0003_seed_products"
down_revision = "0002_index_name"
branch_labels = None
depends_on = None
requires: list[str] = []
migration_type = "seed"

import sqlalchemy as sa
from alembic import op

products = sa.table("products", sa.column("sku"), sa.column("name"), sa.column("price_cents"))
STARTER = [
    ("TEE-001", "T-shirt", 1900),
    ("MUG-001", "Mug", 1200),
    ("CAP-001", "Cap", 1500),
]


def upgrade() -> None:
    for sku, name, price in STARTER:
        # INSERT ... SELECT ... WHERE NOT EXISTS: idempotent, and renders with --sql too.
        missing = sa.select(sa.literal(sku), sa.literal(name), sa.literal(price)).where(
            ~sa.exists().where(products.c.sku == sku)
        )
        op.execute(products.insert().from_select(["sku", "name", "price_cents"], missing))


def downgrade() -> None:
    op.execute(products.delete().where(products.c.sku.in_([s for s, _, _ in STARTER])))
