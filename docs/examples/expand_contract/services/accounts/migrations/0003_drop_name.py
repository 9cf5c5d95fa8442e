"""Contract: drop `name` once no deployed code reads it."""

revision = "0003_drop_name"
down_revision = "0002_add_display_name"
branch_labels = None
depends_on = None
requires: list[str] = []
migration_type = "schema"
phase = "post"  # `migrate --phase post`, after the deploy

import sqlalchemy as sa
from alembic import op


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("name")  # ncm: allow drop-column (the contract step itself)


def downgrade() -> None:
    op.add_column("accounts", sa.Column("name", sa.String(100), nullable=True))
    op.execute("UPDATE accounts SET name = display_name")
