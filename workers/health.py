"""Worker liveness: each worker refreshes a heartbeat key in Redis; ``webhooks worker --check`` reads them.

Key: ``<queue name>:workers:<hostname>:<pid>`` (``webhooks:deliveries:workers:...`` by default), value: JSON
``{"host", "pid", "at"}`` (Unix time of the last beat), with a TTL of ``worker_heartbeat_ttl`` seconds. A
worker whose event loop is stuck stops beating, so its key ages out.

Not arq's ``health_check_key``: arq keeps one key per queue that every worker overwrites and any stopping
worker deletes, so it can neither count the live workers nor tell that one of several has died.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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


def key_prefix(settings: Settings) -> str:
    return f"{settings.queue_name}:workers:"


def heartbeat_key(settings: Settings, host: str | None = None, pid: int | None = None) -> str:
    return f"{key_prefix(settings)}{host or socket.gethostname()}:{pid or os.getpid()}"


async def beat(redis: Redis, settings: Settings, key: str) -> None:
    value = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "at": time.time()})
    await redis.set(key, value, px=int(settings.worker_heartbeat_ttl * 1000))


async def heartbeat_loop(redis: Redis, settings: Settings) -> None:
    """Beat now, then every ``worker_heartbeat_interval`` seconds until cancelled; remove the key on exit."""
    key = heartbeat_key(settings)
    try:
        while True:
            try:
                async with asyncio.timeout(max(settings.worker_heartbeat_interval, 1.0)):
                    await beat(redis, settings, key)
            except Exception as exc:  # Redis away: keep trying; the check will report us missing meanwhile
                log.warning("worker heartbeat failed: %s", type(exc).__name__)
            heap.record_pauses()  # the worker's garbage-collector pauses, into its metrics
            await asyncio.sleep(settings.worker_heartbeat_interval)
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await redis.delete(key)


@dataclass(frozen=True, slots=True)
class WorkerSeen:
    key: str
    age: float  # seconds since its last heartbeat


async def live_workers(redis: Redis, settings: Settings) -> list[WorkerSeen]:
    """Workers whose last heartbeat is at most ``worker_heartbeat_ttl`` seconds old."""
    now = time.time()
    seen: list[WorkerSeen] = []
    async for raw_key in redis.scan_iter(match=key_prefix(settings) + "*", count=100):
        key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
        raw = await redis.get(key)
        if raw is None:
            continue
        try:
            at = float(json.loads(raw)["at"])
        except (ValueError, KeyError, TypeError):
            continue
        age = now - at
        if age <= settings.worker_heartbeat_ttl:
            seen.append(WorkerSeen(key, max(age, 0.0)))
    return seen


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
