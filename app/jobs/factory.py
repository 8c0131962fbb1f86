"""Pick the job-store backend from settings: Redis when `history.redis_url` is set, else SQLite.

Jobs follow the history backend: a deployment that shares conversations across replicas must share job
records too, or a replica could not report on (or resume) a job another one accepted.
"""

from __future__ import annotations

from app.jobs.base import JobStore
from app.settings import Settings


def build_job_store(settings: Settings) -> JobStore:
    """Build the configured `JobStore` (SQLite at `settings.sqlite_path` unless Redis is configured)."""
    if settings.history.redis_url:
        from app.jobs.redis_jobs import RedisJobStore

        return RedisJobStore(settings.history.redis_url)

    from app.jobs.sqlite_jobs import SQLiteJobStore

    settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    return SQLiteJobStore(settings.sqlite_path)
