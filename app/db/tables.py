"""Table definitions the code queries (SQLAlchemy Core), one `metadata` for every table.

The migrations create these tables; they never import this module (a revision must keep meaning what
it meant when written), so a schema change is a new revision plus an edit here, and
`tests/contract/test_job_stores.py` checks the two agree.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# No foreign key from files to jobs: databases adopted from before Alembic have none, and SQLite cannot
# add one without rebuilding the table. Files are only ever written together with their job.
ingest_jobs = sa.Table(
    "ingest_jobs",
    metadata,
    sa.Column("job_id", sa.Text, primary_key=True),
    sa.Column("collection", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    # JSON as text, not a JSON type: the same column on SQLite and PostgreSQL, and what older files hold.
    sa.Column("metadata_json", sa.Text, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("owner", sa.Text, nullable=False, server_default=""),
    # list_unfinished: WHERE status IN (...) ORDER BY created_at
    sa.Index("ingest_jobs_by_status", "status", "created_at"),
)

ingest_job_files = sa.Table(
    "ingest_job_files",
    metadata,
    sa.Column("job_id", sa.Text, primary_key=True),
    sa.Column("document_id", sa.Text, primary_key=True),
    # The file's index in the upload: files come back in upload order.
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("filename", sa.Text, nullable=False),
    sa.Column("stored_path", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("chunks", sa.Integer, nullable=False),
    # The name exactly as uploaded; `filename` is the cleaned name shown (NULL: the same).
    sa.Column("original_filename", sa.Text),
)
