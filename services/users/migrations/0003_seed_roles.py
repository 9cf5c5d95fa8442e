"""Seed the roles every installation needs (idempotent: runs twice without duplicates)."""

revision = "0003_seed_roles"
down_revision = "0002_add_email"
branch_labels = None
depends_on = None
requires: list[str] = []
migration_type = "seed"

import sqlalchemy as sa
from alembic import op

ROLES = [("admin", "Full access"), ("member", "Regular user"), ("viewer", "Read only")]
roles = sa.table("roles", sa.column("name"), sa.column("description"))


def upgrade() -> None:
    op.create_table(
        "roles",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("description", sa.String(255), nullable=False),
    )
    for name, description in ROLES:
        # INSERT ... SELECT ... WHERE NOT EXISTS: idempotent, and renders with --sql too.
        missing = sa.select(sa.literal(name), sa.literal(description)).where(
            ~sa.exists().where(roles.c.name == name)
        )
        op.execute(roles.insert().from_select(["name", "description"], missing))


def downgrade() -> None:
    op.drop_table("roles")
