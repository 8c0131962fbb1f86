"""Jobs run by a worker queue: ingest_jobs.worker, attempts and heartbeat_at.

`worker` names the process running the job ("host:pid", "" when none has claimed it), `attempts`
counts claims, and `heartbeat_at` is the Unix time the worker last said it was alive: the reaper
re-queues a running job whose heartbeat is older than `jobs.heartbeat_timeout_s`.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add worker, attempts and heartbeat_at (existing jobs: no worker, no attempt yet)."""
    op.add_column("ingest_jobs", sa.Column("worker", sa.Text, nullable=False, server_default=""))
    op.add_column("ingest_jobs", sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
    op.add_column("ingest_jobs", sa.Column("heartbeat_at", sa.Double, nullable=True))


def downgrade() -> None:
    """Drop the three columns."""
    with op.batch_alter_table("ingest_jobs") as batch:
        batch.drop_column("heartbeat_at")
        batch.drop_column("attempts")
        batch.drop_column("worker")
