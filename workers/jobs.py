"""arq job functions and the sweeper. Jobs carry ids only; everything else is read from MongoDB."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from webhooks.core import Core
from webhooks.models import DeliveryStatus
from webhooks.queue import Item, attempt_job_id, batch_job_id
from webhooks.timeutil import utcnow
from workers.engine import DeliveryEngine

log = logging.getLogger(__name__)

SWEEP_BATCH = 1000


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
    requeued = 0
    for doc in overdue:
        number = doc["attempt_count"] + 1
        if number == 1 and await core.queue.job_exists(batch_job_id(doc["event_id"])):
            continue
        if await core.queue.job_exists(attempt_job_id(doc["_id"], number)):
            continue
        if await core.queue.enqueue_attempt(doc["_id"], number):
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
