"""Worker liveness: each worker refreshes its heartbeat in Redis; ``webhooks worker --check`` reads them.

One sorted set per queue, ``<queue name>:workers`` (``webhooks:deliveries:workers`` by default): member
``<hostname>:<pid>``, score the Unix time of its last beat. A worker whose event loop is stuck stops beating,
so its score ages; a stopping worker removes its member, and beats drop members long gone. The check reads
the recent members in one command, whatever else Redis holds (it used to SCAN the whole keyspace for one key
per worker, and failed its 5 s timeout once Redis held a few million keys: under load, on every pod at once).

Not arq's ``health_check_key``: arq keeps one key per queue that every worker overwrites and any stopping
worker deletes, so it can neither count the live workers nor tell that one of several has died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from webhooks import heap
from webhooks.redis_conn import RedisConfigError, RedisTarget
from webhooks.settings import Settings

log = logging.getLogger(__name__)


FORGET_AFTER = 10  # heartbeat TTLs after which a member that never said goodbye is dropped


def heartbeats_key(settings: Settings) -> str:
    return f"{settings.queue_name}:workers"


def worker_name(host: str | None = None, pid: int | None = None) -> str:
    return f"{host or socket.gethostname()}:{pid or os.getpid()}"


async def beat(redis: Redis, settings: Settings, name: str) -> None:
    now, key = time.time(), heartbeats_key(settings)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zadd(key, {name: now})
        pipe.zremrangebyscore(key, "-inf", now - FORGET_AFTER * settings.worker_heartbeat_ttl)
        pipe.expire(key, int(FORGET_AFTER * settings.worker_heartbeat_ttl) + 1)
        await pipe.execute()


async def heartbeat_loop(redis: Redis, settings: Settings) -> None:
    """Beat now, then every ``worker_heartbeat_interval`` seconds until cancelled; leave the set on exit."""
    name = worker_name()
    try:
        while True:
            try:
                async with asyncio.timeout(max(settings.worker_heartbeat_interval, 1.0)):
                    await beat(redis, settings, name)
            except Exception as exc:  # Redis away: keep trying; the check will report us missing meanwhile
                log.warning("worker heartbeat failed: %s", type(exc).__name__)
            heap.record_pauses()  # the worker's garbage-collector pauses, into its metrics
            await asyncio.sleep(settings.worker_heartbeat_interval)
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await redis.zrem(heartbeats_key(settings), name)


@dataclass(frozen=True, slots=True)
class WorkerSeen:
    name: str  # <hostname>:<pid>
    age: float  # seconds since its last heartbeat


async def live_workers(redis: Redis, settings: Settings) -> list[WorkerSeen]:
    """Workers whose last heartbeat is at most ``worker_heartbeat_ttl`` seconds old."""
    now = time.time()
    found = await redis.zrangebyscore(
        heartbeats_key(settings), now - settings.worker_heartbeat_ttl, "+inf", withscores=True
    )
    return [
        WorkerSeen(name.decode() if isinstance(name, bytes) else str(name), max(now - at, 0.0))
        for name, at in found
    ]


async def check(settings: Settings, timeout: float = 5.0) -> tuple[bool, str]:
    """(healthy, message) for ``webhooks worker --check``."""
    try:
        target = RedisTarget.of(settings)
    except RedisConfigError as exc:
        return False, str(exc)
    redis: Redis = target.client(socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        async with asyncio.timeout(timeout):
            workers = await live_workers(redis, settings)
    except Exception as exc:
        return False, f"cannot read worker heartbeats from Redis: {type(exc).__name__}: {exc}"
    finally:
        await redis.aclose()
    if not workers:
        return False, (
            f"no worker heartbeat in the last {settings.worker_heartbeat_ttl:g} s "
            f"(queue {settings.queue_name!r})"
        )
    freshest = min(w.age for w in workers)
    return True, (
        f"{len(workers)} worker(s) alive on queue {settings.queue_name!r}; "
        f"last heartbeat {freshest:.1f} s ago"
    )
