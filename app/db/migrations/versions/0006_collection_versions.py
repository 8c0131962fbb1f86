"""Blue/green collections: collection_versions and collection_aliases.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the two tables (no rows: a collection without one serves its own name as version 1)."""
    op.create_table(
        "collection_versions",
        sa.Column("collection", sa.Text, primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("physical", sa.Text, nullable=False),
        sa.Column("embedding_model", sa.Text),
        sa.Column("chunk_size", sa.Integer),
        sa.Column("chunk_overlap", sa.Integer),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("documents", sa.Integer),
        sa.Column("chunks", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("finished_at", sa.Double),
    )
    op.create_table(
        "collection_aliases",
        sa.Column("collection", sa.Text, primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("previous", sa.Integer),
        sa.Column("updated_at", sa.Double, nullable=False),
    )


def downgrade() -> None:
    """Drop them."""
    op.drop_table("collection_aliases")
    op.drop_table("collection_versions")
