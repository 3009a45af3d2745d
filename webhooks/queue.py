"""The queue seam: arq jobs on Redis that carry ids only. MongoDB stays the source of truth."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import in_progress_key_prefix, job_key_prefix
from bson import ObjectId

from webhooks.redis_conn import RedisTarget
from webhooks.settings import Settings

DELIVER_JOB = "deliver"

# One item = one attempt to run: (delivery id, attempt number).
Item = tuple[str, int]


def wake_key(queue_name: str) -> str:
    """A list that every enqueue pushes a token to; idle workers block on it (see ``workers.wakeup``)."""
    return f"{queue_name}:wake"


WAKE_TOKENS = 16  # enough to wake every worker of a burst; the list never grows past this


def batch_job_id(event_id: ObjectId) -> str:
    """First attempts of every delivery of one event travel in one job."""
    return f"event:{event_id}:1"


def attempt_job_id(delivery_id: ObjectId | str, number: int) -> str:
    return f"{delivery_id}:{number}"


def rescue_job_id(delivery_id: ObjectId | str, number: int, generation: int) -> str:
    """The sweeper's job for an attempt whose own job is stuck on a dead worker (see ``workers.jobs``)."""
    return f"{delivery_id}:{number}:rescue{generation}"


def job_timeout(settings: Settings) -> float:
    """arq's limit for one job. Generous: a job may wait for connection slots behind a burst before its
    attempts (each with its own ``delivery_timeout`` deadline) start. A job on a dead worker is found by
    its lease (below), not by this timeout."""
    return settings.delivery_timeout + 300


LEASE_TTL = 15.0  # seconds: a running job's lease outlives its worker by at most this
LEASE_REFRESH = LEASE_TTL / 3


def lease_key(queue_name: str, job_id: str) -> str:
    """Held by the worker running ``job_id`` and refreshed while it runs (see ``workers.leases``)."""
    return f"{queue_name}:lease:{job_id}"


ARQ_IN_PROGRESS_EXTRA = 10  # seconds: arq's in-progress mark lives for the longest job timeout + 10 s


class JobState(Enum):
    ABSENT = "absent"
    ALIVE = "alive"
    DEAD = "dead"


def redis_settings(settings: Settings) -> RedisSettings:
    """One Redis server or a Sentinel-monitored master (``webhooks.redis_conn``)."""
    return RedisTarget.of(settings).arq_settings()


class DeliveryQueue:
    def __init__(self, pool: ArqRedis, settings: Settings) -> None:
        self.pool = pool
        self.queue_name = settings.queue_name
        self._in_progress_ttl = job_timeout(settings) + ARQ_IN_PROGRESS_EXTRA

    @classmethod
    async def connect(cls, settings: Settings) -> DeliveryQueue:
        pool = await create_pool(redis_settings(settings), default_queue_name=settings.queue_name)
        return cls(pool, settings)

    async def close(self) -> None:
        await self.pool.aclose()

    async def enqueue(self, job_id: str, items: list[Item], at: datetime | None = None) -> bool:
        """Queue one job; False if a job with this id is already queued or running (idempotent)."""
        job = await self.pool.enqueue_job(
            DELIVER_JOB, items, _job_id=job_id, _defer_until=at, _queue_name=self.queue_name
        )
        if job is not None:
            await self.wake()  # also for deferred jobs: a sleeping worker recomputes its wake-up time
        return job is not None

    async def wake(self) -> None:
        key = wake_key(self.queue_name)
        async with self.pool.pipeline(transaction=False) as pipe:
            pipe.lpush(key, b"1")
            pipe.ltrim(key, 0, WAKE_TOKENS - 1)
            await pipe.execute()

    async def enqueue_first_attempts(self, event_id: ObjectId, delivery_ids: list[ObjectId]) -> bool:
        if not delivery_ids:
            return False
        return await self.enqueue(batch_job_id(event_id), [(str(d), 1) for d in delivery_ids])

    async def enqueue_attempt(self, delivery_id: ObjectId, number: int, at: datetime | None = None) -> bool:
        return await self.enqueue(attempt_job_id(delivery_id, number), [(str(delivery_id), number)], at)

    async def job_exists(self, job_id: str) -> bool:
        return bool(await self.pool.exists(job_key_prefix + job_id))

    async def job_state(self, job_id: str) -> JobState:
        """``ALIVE`` while a job is queued or claimed by a live worker; ``DEAD`` when its worker died.

        A claimed job (arq's in-progress mark) whose lease is gone, claimed more than one lease period ago,
        sits on a dead worker: arq itself would retry it only when the mark expires (``job_timeout``).
        """
        if not await self.job_exists(job_id):
            return JobState.ABSENT
        claimed = await self.job_started_ago(job_id)
        if claimed is None or claimed < LEASE_TTL:  # queued, or just claimed (lease being written)
            return JobState.ALIVE
        alive = await self.pool.exists(lease_key(self.queue_name, job_id))
        return JobState.ALIVE if alive else JobState.DEAD

    async def job_started_ago(self, job_id: str) -> float | None:
        """Seconds since a worker claimed this job; None if no worker holds it (still queued, or done).

        arq marks a claimed job with ``arq:in-progress:<job>`` for a fixed TTL (job timeout + 10 s) and
        deletes the mark when the job ends, so the mark's remaining TTL dates the claim, even when the
        worker died before it started running the job.
        """
        ttl_ms = int(await self.pool.pttl(in_progress_key_prefix + job_id))
        if ttl_ms < 0:
            return None
        return max(0.0, self._in_progress_ttl - ttl_ms / 1000)
