"""Create products and their prices."""

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
        "products",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("sku", sa.String(32), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("price_cents", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("sku", name="uq_products_sku"),
    )


def downgrade() -> None:
    op.drop_table("products")
