"""`ragserver worker`: a process that runs ingestion jobs from the arq queue (`jobs.runner = queue`).

It builds the same object graph as the server (`open_container`), so a job runs through the same
job runner (`app/jobs/runner.py`) and ingest pipeline; one job at a time (ingestion is CPU-bound: add
workers to go faster). Its reaper re-queues jobs whose worker stopped heartbeating. SIGTERM/SIGINT: arq
stops taking messages, the running job stops at its next boundary and stays unfinished, and the reaper
of any live worker queues it again once its heartbeat is stale (ingestion is idempotent: nothing is
duplicated).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from app.container import Container, open_container
from app.jobs.queue import TASK
from app.settings import Settings

log = logging.getLogger(__name__)

# arq's own limit on one message; a job's real bound is its files' limits. Long, so that arq never
# re-runs a message on its own while its job is still running (the reaper, on heartbeats, does that).
MESSAGE_TIMEOUT_S = 24 * 3600


async def _ingest_job(ctx: dict[str, Any], job_id: str) -> None:
    await ctx["container"].runner.run_queued(job_id)


async def run_worker(settings: Settings | None = None, *, burst: bool = False) -> None:
    """Consume the queue until stopped (`burst`: until it is empty, for tests and one-off drains)."""
    from arq.worker import Worker, func

    settings = settings or Settings()
    if settings.jobs.runner != "queue":
        settings.jobs.runner = "queue"
    container = Container(settings)
    async with open_container(container):
        queue = container.job_queue
        assert queue is not None
        await asyncio.to_thread(lambda: (container.embedder, container.pipeline))
        runner = container.runner
        await runner.start_worker()
        worker = Worker(
            functions=[func(_ingest_job, name=TASK, max_tries=1000)],
            queue_name=queue.queue_name,
            redis_settings=queue.redis_settings,
            ctx={"container": container},
            max_jobs=1,
            job_timeout=MESSAGE_TIMEOUT_S,
            keep_result=0,
            poll_delay=0.2,
            burst=burst,
            handle_signals=False,
            log_results=False,
        )
        log.info("worker %s consuming %s", runner.worker_id, queue.queue_name)
        try:
            await worker.async_run()
        finally:
            await runner.stop()
            await worker.close()
