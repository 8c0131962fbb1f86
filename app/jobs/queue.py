"""The ingestion job queue for `jobs.runner = queue`: arq on Redis (docs/ARCHITECTURE.md says why arq).

The job record in the relational database stays the source of truth; the queue only says "look at job
X". Each message's arq id is `<job_id>:<attempts>:<updated_at>`, so queuing the same job state twice
(the reaper and a retry racing, say) is one message, and a job re-queued after its worker died is a new
one. A message for a job that is finished, cancelled or held by a live worker is a no-op (the claim in
the job store decides), so a duplicate never runs a job twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.jobs.base import Job

TASK = "ingest_job"


class ArqJobQueue:
    """Enqueue ingestion jobs on an arq queue (the pool connects on first use)."""

    def __init__(self, redis_url: str, queue_name: str):
        self.redis_url = redis_url
        self.queue_name = queue_name
        self._pool: Any = None

    @property
    def redis_settings(self) -> Any:
        from arq.connections import RedisSettings

        return RedisSettings.from_dsn(self.redis_url)

    async def pool(self) -> Any:
        if self._pool is None:
            from arq import create_pool

            self._pool = await create_pool(self.redis_settings, default_queue_name=self.queue_name)
        return self._pool

    @staticmethod
    def message_id(job: Job) -> str:
        return f"{job.job_id}:{job.attempts}:{job.updated_at:.6f}"

    async def enqueue(self, job: Job) -> None:
        pool = await self.pool()
        await pool.enqueue_job(TASK, job.job_id, _job_id=self.message_id(job), _queue_name=self.queue_name)

    async def depth(self) -> int:
        """Messages waiting in the queue."""
        pool = await self.pool()
        return int(await pool.zcard(self.queue_name))

    async def ping(self) -> bool:
        pool = await self.pool()
        return bool(await pool.ping())

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None
