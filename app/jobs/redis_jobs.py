"""Ingestion job records in Redis, shared by API replicas and ingestion workers.

Keys under `key_prefix`: `data:<job_id>` holds the job as JSON (`Job.to_dict`), and `unfinished` is the
set of job ids still queued or running (what start-up resumes). How durable a write is depends on the
Redis server's persistence (AOF with appendfsync everysec or always for production).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from app.history.redis_history import ping_redis
from app.jobs.base import Job, check_file_status, check_job_status


class RedisJobStore:
    """`JobStore` on Redis (redis-py asyncio).

    Read-modify-write updates run as WATCH/MULTI transactions (redis-py retries them on conflict), so
    workers updating different files of one job at the same time never lose each other's writes.
    """

    def __init__(self, url: str, key_prefix: str = "ragserver:job:") -> None:
        self.key_prefix = key_prefix
        # No connection is made here: the pool connects on first use, so building the store never blocks;
        # the connect timeout keeps ping() (health checks) from hanging on an unreachable host.
        self._redis: Redis = Redis.from_url(url, decode_responses=True, socket_connect_timeout=5.0)
        self._unfinished_key = f"{key_prefix}unfinished"

    def _job_key(self, job_id: str) -> str:
        # The "data:" namespace keeps a job id from ever colliding with the `unfinished` set's key.
        return f"{self.key_prefix}data:{job_id}"

    def _queue_membership(self, pipe: Pipeline, job: Job) -> None:
        if job.is_finished:
            pipe.srem(self._unfinished_key, job.job_id)
        else:
            pipe.sadd(self._unfinished_key, job.job_id)

    async def create(self, job: Job) -> None:
        """See `JobStore.create`."""
        key = self._job_key(job.job_id)

        async def _create(pipe: Pipeline) -> None:
            if await pipe.exists(key):
                raise ValueError(f"job {job.job_id} already exists")
            pipe.multi()
            pipe.set(key, _dumps(job))
            self._queue_membership(pipe, job)

        await self._redis.transaction(_create, key)

    async def get(self, job_id: str) -> Job | None:
        """See `JobStore.get`."""
        raw = await self._redis.get(self._job_key(job_id))
        return None if raw is None else Job.from_dict(json.loads(raw))

    async def update_file(
        self, job_id: str, document_id: str, status: str, error: str | None = None, chunks: int = 0
    ) -> None:
        """See `JobStore.update_file`."""
        check_file_status(status)

        def _change(job: Job) -> None:
            job_file = job.file(document_id)
            job_file.status, job_file.error, job_file.chunks = status, error, chunks

        await self._mutate(job_id, _change)

    async def set_status(self, job_id: str, status: str) -> None:
        """See `JobStore.set_status`."""
        check_job_status(status)

        def _change(job: Job) -> None:
            job.status = status

        await self._mutate(job_id, _change)

    async def list_unfinished(self) -> list[Job]:
        """See `JobStore.list_unfinished`."""
        # decode_responses=True: members are str (redis-py's stubs say bytes | str).
        job_ids = sorted(cast(set[str], await self._redis.smembers(self._unfinished_key)))
        if not job_ids:
            return []
        raws = await self._redis.mget([self._job_key(job_id) for job_id in job_ids])
        jobs = [Job.from_dict(json.loads(raw)) for raw in raws if raw is not None]
        stale = [job_id for job_id, raw in zip(job_ids, raws, strict=True) if raw is None]
        if stale:
            # A job key deleted by hand (or by eviction) must not be resumed forever.
            await self._redis.srem(self._unfinished_key, *stale)
        return sorted((job for job in jobs if not job.is_finished), key=lambda j: (j.created_at, j.job_id))

    async def ping(self) -> bool:
        """See `JobStore.ping`."""
        return await ping_redis(self._redis)

    async def aclose(self) -> None:
        """See `JobStore.aclose`."""
        await self._redis.aclose()

    async def _mutate(self, job_id: str, change: Callable[[Job], None]) -> None:
        """Apply `change` to the stored job atomically and bump updated_at; KeyError for an unknown job."""
        key = self._job_key(job_id)

        async def _transaction(pipe: Pipeline) -> None:
            raw = await pipe.get(key)
            if raw is None:
                raise KeyError(f"unknown job {job_id}")
            job = Job.from_dict(json.loads(raw))
            change(job)
            job.updated_at = time.time()
            pipe.multi()
            pipe.set(key, _dumps(job))
            self._queue_membership(pipe, job)

        await self._redis.transaction(_transaction, key)


def _dumps(job: Job) -> str:
    return json.dumps(job.to_dict(), ensure_ascii=False)
