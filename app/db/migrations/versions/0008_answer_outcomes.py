"""Answer outcomes say what the user got: answered, abstained, refused or error.

The old values mixed two questions: "cited" and "uncited" were both answers (whether it cited is in its
citations), and "no_answer" was set by a pattern that also caught right answers ending with "I don't
know.". Old rows map to the new names; a downgrade maps "answered" back to "cited".

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_RESPONSES = sa.table("responses", sa.column("outcome", sa.Text))


def _rename(mapping: dict[str, str]) -> None:
    for old, new in mapping.items():
        op.execute(_RESPONSES.update().where(_RESPONSES.c.outcome == old).values(outcome=new))


def upgrade() -> None:
    _rename({"cited": "answered", "uncited": "answered", "no_answer": "abstained"})


def downgrade() -> None:
    _rename({"answered": "cited", "abstained": "no_answer", "refused": "cited"})
