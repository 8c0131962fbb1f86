"""Audit entries get a random public id: audit_log.public_id ("aud_" and 16 hex characters).

Clients saw the integer `id`, and the gaps between one tenant's ids counted the other tenants' writes.
The integer stays (it orders the entries of one instant) but is no longer shown. Existing entries get
random ids here; the column is then NOT NULL and unique.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add public_id, fill it for existing entries, then make it NOT NULL and unique."""
    op.add_column("audit_log", sa.Column("public_id", sa.Text, nullable=True))
    audit_log = sa.table("audit_log", sa.column("id", sa.Integer), sa.column("public_id", sa.Text))
    connection = op.get_bind()
    ids = connection.execute(sa.select(audit_log.c.id)).scalars().all()
    if ids:
        connection.execute(
            audit_log.update()
            .where(audit_log.c.id == sa.bindparam("row_id"))
            .values(public_id=sa.bindparam("new_id")),
            [{"row_id": row_id, "new_id": "aud_" + secrets.token_hex(8)} for row_id in ids],
        )
    # SQLite cannot alter a column in place: batch mode copies the table (PostgreSQL: one ALTER).
    with op.batch_alter_table("audit_log") as batch:
        batch.alter_column("public_id", existing_type=sa.Text, nullable=False)
    op.create_index("audit_log_by_public_id", "audit_log", ["public_id"], unique=True)


def downgrade() -> None:
    """Drop public_id (clients see the integer ids again)."""
    op.drop_index("audit_log_by_public_id", table_name="audit_log")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("public_id")
