"""arq job functions and the sweeper. Jobs carry ids only; everything else is read from MongoDB."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from webhooks.core import Core
from webhooks.models import DeliveryStatus
from webhooks.queue import Item, attempt_job_id, batch_job_id, rescue_job_id
from webhooks.timeutil import utcnow
from workers.engine import DeliveryEngine

log = logging.getLogger(__name__)

SWEEP_BATCH = 1000
MAX_RESCUES = 5  # fresh job ids per attempt for jobs stuck on dead workers


async def deliver(ctx: dict[str, Any], items: list[Item]) -> int:
    engine: DeliveryEngine = ctx["engine"]
    return await engine.run([(str(d), int(n)) for d, n in items])


async def sweep_once(core: Core) -> int:
    """Queue again every pending delivery whose next attempt is overdue and has no job in Redis.

    This is what makes a Redis flush, a restart without persistence or a crashed job lose nothing.
    """
    settings = core.settings
    before = utcnow() - timedelta(seconds=settings.sweep_grace)
    overdue = await core.delivery_repo.overdue(before, SWEEP_BATCH)
    # A job that a worker started longer ago than this is on a dead worker (SIGKILL, OOM, lost host): an
    # attempt has a wall-clock deadline of delivery_timeout and sweep_grace covers the bookkeeping. Its job
    # key outlives the worker (arq only retries it once the in-progress mark expires, job_timeout + 10 s
    # later, ~50 s by default), so "a job key exists" alone would leave the delivery stuck until then.
    stuck_after = settings.delivery_timeout + settings.sweep_grace
    requeued = 0
    for doc in overdue:
        number = doc["attempt_count"] + 1
        job_ids = [
            attempt_job_id(doc["_id"], number),
            *(rescue_job_id(doc["_id"], number, g) for g in range(1, MAX_RESCUES + 1)),
        ]
        if number == 1:
            job_ids.insert(0, batch_job_id(doc["event_id"]))
        free: str | None = None
        alive = False
        for job_id in job_ids:
            if await core.queue.job_exists(job_id):
                started = await core.queue.job_started_ago(job_id)
                if started is None or started < stuck_after:  # queued, or running on a live worker
                    alive = True
                    break
            elif free is None and job_id != batch_job_id(doc["event_id"]):
                free = job_id
        if alive or free is None:
            continue
        # A duplicate run is harmless: the engine makes an attempt only if the delivery has not moved on.
        if await core.queue.enqueue(free, [(str(doc["_id"]), number)]):
            requeued += 1
    if requeued:
        log.warning("sweeper re-queued %d overdue deliveries", requeued)
    return requeued


async def sweeper_loop(core: Core) -> None:
    while True:
        await asyncio.sleep(core.settings.sweep_interval)
        try:
            await sweep_once(core)
        except Exception:
            log.exception("sweep failed; trying again in %.0f s", core.settings.sweep_interval)


__all__ = ["DeliveryStatus", "deliver", "sweep_once", "sweeper_loop"]
