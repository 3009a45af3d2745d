"""arq job functions and the sweeper. Jobs carry ids only; everything else is read from MongoDB."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from webhooks.core import Core
from webhooks.models import DeliveryStatus
from webhooks.queue import Item, JobState, attempt_job_id, batch_job_id, rescue_job_id
from webhooks.timeutil import utcnow
from workers.engine import DeliveryEngine
from workers.leases import JobLeases

log = logging.getLogger(__name__)

SWEEP_BATCH = 1000
MAX_RESCUES = 5  # fresh job ids per attempt for jobs stuck on dead workers


async def deliver(ctx: dict[str, Any], items: list[Item]) -> int:
    engine: DeliveryEngine = ctx["engine"]
    leases: JobLeases = ctx["leases"]
    async with leases.holding(str(ctx["job_id"])):
        return await engine.run([(str(d), int(n)) for d, n in items])


async def sweep_once(core: Core) -> int:
    """Queue again every pending delivery whose next attempt is overdue and whose job is lost or dead.

    This is what makes a Redis flush, a restart without persistence or a crashed job lose nothing.
    """
    settings = core.settings
    before = utcnow() - timedelta(seconds=settings.sweep_grace)
    overdue = await core.delivery_repo.overdue(before, SWEEP_BATCH)
    requeued = 0
    for doc in overdue:
        number = doc["attempt_count"] + 1
        batch = batch_job_id(doc["event_id"]) if number == 1 else None
        own = [attempt_job_id(doc["_id"], number)]
        own += [rescue_job_id(doc["_id"], number, g) for g in range(1, MAX_RESCUES + 1)]
        free: str | None = None
        alive = False
        for job_id in ([batch] if batch else []) + own:
            state = await core.queue.job_state(job_id)
            if state is JobState.ALIVE:  # queued, or running on a live worker: it will make the attempt
                alive = True
                break
            if state is JobState.ABSENT and free is None and job_id != batch:
                free = job_id
        if alive or free is None:
            continue
        # Lost (Redis flushed) or stuck on a dead worker. A duplicate run is harmless: the engine makes an
        # attempt only if the delivery has not moved on.
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
