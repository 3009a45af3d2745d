"""An arq worker that sleeps until there is work, instead of polling every ``poll_delay``.

arq's stock loop polls the queue every ``poll_delay`` (0.5 s by default: ~250 ms added to every first
attempt). Here the loop blocks on a Redis list that every enqueue pushes a token to (``BLPOP``), and never
sleeps past the due time of the earliest deferred job (a retry), so a new job starts within a round trip
and a retry fires on time, while an idle worker makes about one Redis call a second.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from arq.connections import create_pool, log_redis_info
from arq.utils import timestamp_ms
from arq.worker import Worker

from webhooks.queue import wake_key

log = logging.getLogger(__name__)

MAX_IDLE_WAIT = 1.0  # seconds: the longest sleep, so heartbeats and health checks stay fresh


class WakeableWorker(Worker):
    async def main(self) -> None:
        if self._pool is None:
            self._pool = await create_pool(
                self.redis_settings,
                job_deserializer=self.job_deserializer,
                job_serializer=self.job_serializer,
                default_queue_name=self.queue_name,
                expires_extra_ms=self.expires_extra_ms,
            )
        log.info("Starting worker for %d functions: %s", len(self.functions), ", ".join(self.functions))
        await log_redis_info(self.pool, log.info)
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        key = wake_key(self.queue_name)
        while True:
            await self._poll_iteration()
            if self.burst and await self.pool.zcard(self.queue_name) == 0:
                await asyncio.gather(*self.tasks.values())
                return
            await self._wait_for_work(key)

    async def _wait_for_work(self, key: str) -> None:
        if self.job_counter >= self.max_jobs:
            await asyncio.sleep(self.poll_delay_s)  # saturated: a running job must finish first
            return
        wait = MAX_IDLE_WAIT
        earliest = await self.pool.zrange(self.queue_name, 0, 0, withscores=True)
        if earliest:
            wait = min(wait, max(0.0, (earliest[0][1] - timestamp_ms()) / 1000))
        if wait <= 0.001:
            await asyncio.sleep(0)  # due now (or held back by another worker's claim): poll again
            if earliest and await self._only_claimed(earliest[0][0]):
                await asyncio.sleep(self.poll_delay_s)
            return
        # Redis ≥ 6 takes a fractional BLPOP timeout; redis-py's stub says int.
        blocking: Awaitable[object] = self.pool.blpop([key], timeout=wait)  # type: ignore[arg-type,assignment]
        await blocking

    async def _only_claimed(self, job_id: bytes) -> bool:
        """The earliest due job is running elsewhere: don't spin on it."""
        return bool(await self.pool.exists(b"arq:in-progress:" + job_id))
