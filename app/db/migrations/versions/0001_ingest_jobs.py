"""Ingestion job records: ingest_jobs and ingest_job_files.

Adopts databases from before Alembic, when the SQLite job store created these tables itself (and, older
still, ingest_jobs had no owner column): whatever exists is kept with its rows, only what is missing is
created.

Revision ID: 0001
Revises:
Create Date: 2025-06-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create (or complete) the job tables and their index."""
    inspector = sa.inspect(op.get_bind())
    existing = set(inspector.get_table_names())
    if "ingest_jobs" in existing:
        if "owner" not in {column["name"] for column in inspector.get_columns("ingest_jobs")}:
            # Jobs from before owners belong to any instance ("").
            op.add_column("ingest_jobs", _owner_column())
        if "ingest_jobs_by_status" not in {index["name"] for index in inspector.get_indexes("ingest_jobs")}:
            _create_status_index()
    else:
        op.create_table(
            "ingest_jobs",
            sa.Column("job_id", sa.Text, primary_key=True),
            sa.Column("collection", sa.Text, nullable=False),
            sa.Column("status", sa.Text, nullable=False),
            sa.Column("metadata_json", sa.Text, nullable=False),
            sa.Column("created_at", sa.Double, nullable=False),
            sa.Column("updated_at", sa.Double, nullable=False),
            _owner_column(),
        )
        _create_status_index()
    if "ingest_job_files" not in existing:
        op.create_table(
            "ingest_job_files",
            sa.Column("job_id", sa.Text, primary_key=True),
            sa.Column("document_id", sa.Text, primary_key=True),
            sa.Column("position", sa.Integer, nullable=False),
            sa.Column("filename", sa.Text, nullable=False),
            sa.Column("stored_path", sa.Text, nullable=False),
            sa.Column("status", sa.Text, nullable=False),
            sa.Column("error", sa.Text),
            sa.Column("chunks", sa.Integer, nullable=False),
        )


def downgrade() -> None:
    """Drop the job tables (and every job record in them)."""
    op.drop_table("ingest_job_files")
    op.drop_index("ingest_jobs_by_status", table_name="ingest_jobs")
    op.drop_table("ingest_jobs")


def _owner_column() -> sa.Column[str]:
    return sa.Column("owner", sa.Text, nullable=False, server_default="")


def _create_status_index() -> None:
    op.create_index("ingest_jobs_by_status", "ingest_jobs", ["status", "created_at"])
