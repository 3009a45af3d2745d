"""An arq worker that sleeps until there is work, instead of polling every ``poll_delay``.

arq's stock loop polls the queue every ``poll_delay`` (0.5 s by default: ~250 ms added to every first
attempt). Here the loop blocks on a Redis list that every enqueue pushes a token to (``BLPOP``), and never
sleeps past the due time of the earliest deferred job (a retry), so a new job starts within a round trip
and a retry fires on time, while an idle worker makes about one Redis call a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable

from arq.connections import create_pool, log_redis_info
from arq.utils import timestamp_ms
from arq.worker import Worker

from webhooks.queue import wake_key

log = logging.getLogger(__name__)

MAX_IDLE_WAIT = 1.0  # seconds: the longest sleep, so heartbeats and health checks stay fresh


class WakeableWorker(Worker):
    """arq's worker with an event-driven loop: a listener task turns wake tokens into an asyncio event."""

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
        woken = asyncio.Event()
        listener = asyncio.create_task(self._listen(wake_key(self.queue_name), woken))
        try:
            while True:
                woken.clear()
                await self._poll_iteration()
                if self.burst and await self.pool.zcard(self.queue_name) == 0:
                    await asyncio.gather(*self.tasks.values())
                    return
                await self._wait_for_work(woken)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's, but a stop signal that arrives while a batch of jobs is being claimed ends the claiming."""
        for job_id in job_ids:
            if not self.allow_pick_jobs:
                return
            await super().start_jobs([job_id])

    async def _sleep_until_tasks_complete(self) -> None:
        """Graceful stop: wait for the jobs still running (arq's version also waits for finished tasks
        that its poll loop has not yet cleared)."""
        while running := [task for task in self.tasks.values() if not task.done()]:
            # (again after each wait: a job claimed while the signal arrived may start just after it)
            await asyncio.wait(running)

    async def _listen(self, key: str, woken: asyncio.Event) -> None:
        """Block on the wake list (one Redis call per token, or per idle second) and set ``woken``."""
        while True:
            try:
                # redis-py's stub types the timeout as int; Redis takes seconds.
                got: Awaitable[object] = self.pool.blpop([key], timeout=1)  # type: ignore[assignment]
                if await got:
                    woken.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("wake-up listener lost Redis; retrying", exc_info=True)
                woken.set()  # fall back to polling while Redis is away
                await asyncio.sleep(self.poll_delay_s)

    async def _wait_for_work(self, woken: asyncio.Event) -> None:
        """Sleep until a wake token, the next deferred job's due time, or MAX_IDLE_WAIT (timed by asyncio)."""
        if self.job_counter >= self.max_jobs:
            await asyncio.sleep(self.poll_delay_s)  # saturated: a running job must finish first
            return
        now = timestamp_ms()
        wait = MAX_IDLE_WAIT
        upcoming = await self.pool.zrangebyscore(
            self.queue_name, now, "+inf", start=0, num=1, withscores=True
        )
        if upcoming:
            wait = min(wait, max(0.0, (upcoming[0][1] - now) / 1000))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(woken.wait(), timeout=wait)
