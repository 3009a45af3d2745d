"""Leases on running jobs: proof, refreshed every few seconds, that the worker running a job is alive.

The sweeper re-queues an overdue delivery whose job was claimed but has no lease: its worker died
(SIGKILL, OOM, lost host). A live job keeps its lease however long it waits for connection slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from redis.asyncio import Redis

from webhooks.queue import LEASE_REFRESH, LEASE_TTL, lease_key

log = logging.getLogger(__name__)


class JobLeases:
    def __init__(self, redis: Redis, queue_name: str) -> None:
        self._redis = redis
        self._queue_name = queue_name
        self._held: set[str] = set()

    @contextlib.asynccontextmanager
    async def holding(self, job_id: str) -> AsyncIterator[None]:
        key = lease_key(self._queue_name, job_id)
        await self._redis.set(key, b"1", px=int(LEASE_TTL * 1000))
        self._held.add(key)
        try:
            yield
        finally:
            self._held.discard(key)
            with contextlib.suppress(Exception):  # an unreleased lease just expires
                await self._redis.delete(key)

    async def refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(LEASE_REFRESH)
            if not self._held:
                continue
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key in list(self._held):
                        pipe.pexpire(key, int(LEASE_TTL * 1000))
                    await pipe.execute()
            except Exception:
                log.warning("could not refresh %d job leases", len(self._held), exc_info=True)
