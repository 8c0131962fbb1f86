"""The decision end of the loop (issue 24): registered models, answer profiles, experiments, and the arm,
unit and estimated cost of every answer.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Three tables, three columns on responses (NULL for the answers from before)."""
    op.create_table(
        "llm_models",
        sa.Column("tenant", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("spec_json", sa.Text, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
    )
    op.create_table(
        "answer_profiles",
        sa.Column("collection", sa.Text, primary_key=True),
        sa.Column("profile_json", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
    )
    op.create_table(
        "experiments",
        sa.Column("tenant", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("spec_json", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("stopped_arms_json", sa.Text, nullable=False),
        sa.Column("log_json", sa.Text, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("started_at", sa.Double),
    )
    # Revision 0005 creates `responses` from its definition in app/db/tables.py, which now has these
    # columns: a database created from scratch has them already, an older one gets them here.
    inspector = sa.inspect(op.get_bind())
    have = {c["name"] for c in inspector.get_columns("responses")}
    missing = [c for c in (("arm", sa.Text), ("unit", sa.Text), ("cost", sa.Double)) if c[0] not in have]
    if missing:
        with op.batch_alter_table("responses") as batch:
            for name, kind in missing:
                batch.add_column(sa.Column(name, kind))
    if "responses_by_experiment" not in {i["name"] for i in inspector.get_indexes("responses")}:
        op.create_index("responses_by_experiment", "responses", ["experiment", "created_at"])


def downgrade() -> None:
    """Drop them."""
    op.drop_index("responses_by_experiment", table_name="responses")
    with op.batch_alter_table("responses") as batch:
        batch.drop_column("cost")
        batch.drop_column("unit")
        batch.drop_column("arm")
    op.drop_table("experiments")
    op.drop_table("answer_profiles")
    op.drop_table("llm_models")
