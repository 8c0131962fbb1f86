"""Holistic answering (issue 25): a routing chain per collection, and curated answers.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Two tables."""
    op.create_table(
        "routing_chains",
        sa.Column("collection", sa.Text, primary_key=True),
        sa.Column("chain_json", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
    )
    op.create_table(
        "curated_answers",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("collection", sa.Text, nullable=False),
        sa.Column("question", sa.Text, nullable=False),
        sa.Column("answer", sa.Text, nullable=False),
        sa.Column("citations_json", sa.Text, nullable=False),
        sa.Column("documents_json", sa.Text, nullable=False),
        sa.Column("embedding_json", sa.Text),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("source_response_id", sa.Text),
        sa.Column("note", sa.Text),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("approved_by", sa.Text),
    )
    op.create_index("curated_answers_by_collection", "curated_answers", ["collection", "status"])
    op.create_index("curated_answers_by_source", "curated_answers", ["source_response_id"])


def downgrade() -> None:
    """Drop them."""
    op.drop_index("curated_answers_by_source", table_name="curated_answers")
    op.drop_index("curated_answers_by_collection", table_name="curated_answers")
    op.drop_table("curated_answers")
    op.drop_table("routing_chains")
