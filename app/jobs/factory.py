"""Build the job store: always `SQLJobStore` on `settings.database_url`.

The URL picks the backend: the default SQLite file under the data dir on one machine, PostgreSQL when
replicas share job records (so any replica can report on, and its owner resume, a job it accepted).
"""

from __future__ import annotations

from app.jobs.base import JobStore
from app.settings import Settings


def build_job_store(settings: Settings) -> JobStore:
    """Build the `JobStore`, migrating its database to the newest schema first."""
    from app.jobs.sql_jobs import SQLJobStore

    return SQLJobStore(settings.database_url)
