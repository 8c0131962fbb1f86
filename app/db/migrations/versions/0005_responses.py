"""Response traces, feedback and engagement events (the MLOps loop).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from app.db.tables import response_events, response_feedback, responses

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = (responses, response_feedback, response_events)


def upgrade() -> None:
    """Create the three tables with their indexes (from their definitions in app/db/tables.py)."""
    bind = op.get_bind()
    for table in _TABLES:
        table.create(bind)


def downgrade() -> None:
    """Drop them."""
    bind = op.get_bind()
    for table in reversed(_TABLES):
        table.drop(bind)
