"""Job files keep the name exactly as uploaded: ingest_job_files.original_filename.

`filename` became the cleaned name shown to users (no control or bidi characters, length capped);
rows from before hold the uploaded name there and NULL here.

Revision ID: 0002
Revises: 0001
Create Date: 2025-07-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the nullable original_filename column."""
    op.add_column("ingest_job_files", sa.Column("original_filename", sa.Text, nullable=True))


def downgrade() -> None:
    """Drop original_filename (the cleaned names stay in filename)."""
    with op.batch_alter_table("ingest_job_files") as batch:
        batch.drop_column("original_filename")
