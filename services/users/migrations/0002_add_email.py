"""Add an email address to users, with a unique index."""

revision = "0002_add_email"
down_revision = "0001_initial"
branch_labels = None
depends_on = None
requires: list[str] = []
migration_type = "schema"

import sqlalchemy as sa
from alembic import op


def upgrade() -> None:
    op.add_column("users", sa.Column("email", sa.String(255), nullable=True))
    op.create_index("ix_users_email", "users", ["email"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_users_email", table_name="users")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("email")


def verify() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("users")}
    assert "email" in columns, "users.email is missing"
