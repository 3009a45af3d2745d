"""The queue seam: the Redis that arq and the lanes share, and the names of arq's jobs.

Delivery attempts wait in per-webhook lanes (``webhooks.lanes``), built on this Redis because arq's queue
has no per-key concurrency or fairness. arq runs the worker process (lifecycle, signals, its health-check
key) and the sweeper as a cron job. MongoDB stays the source of truth for both.
"""

from __future__ import annotations

from arq.connections import ArqRedis, RedisSettings, create_pool

from webhooks.lanes import Lanes
from webhooks.redis_conn import RedisTarget
from webhooks.settings import Settings

SWEEP_JOB = "sweep"


def redis_settings(settings: Settings) -> RedisSettings:
    """One Redis server or a Sentinel-monitored master (``webhooks.redis_conn``)."""
    return RedisTarget.of(settings).arq_settings()


async def connect_redis(settings: Settings) -> ArqRedis:
    return await create_pool(redis_settings(settings), default_queue_name=settings.queue_name)


def lanes_of(redis: ArqRedis, settings: Settings) -> Lanes:
    return Lanes(redis, settings.queue_name, default_limit=settings.webhook_max_in_flight)
