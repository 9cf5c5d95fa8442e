"""Index product names for search."""

revision = "0002_index_name"
down_revision = "0001_initial"
branch_labels = None
depends_on = None
requires: list[str] = []
migration_type = "index"

from alembic import op


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.create_index(
                "ix_products_name", "products", ["name"], postgresql_concurrently=True
            )
    else:
        op.create_index("ix_products_name", "products", ["name"])


def downgrade() -> None:
    op.drop_index("ix_products_name", table_name="products")
