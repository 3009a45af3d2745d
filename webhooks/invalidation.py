"""Cache invalidation across processes over Redis pub/sub.

Writers (API keys revoked, webhooks changed or disabled) publish a small message; every API and worker
process listens (one subscriber connection each, started by ``webhooks.core.open_core``) and drops what it
cached. Caches also expire on their own after a short TTL, which bounds staleness if a message is lost;
after a reconnect, listeners clear everything, since messages may have been missed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import orjson
from redis.asyncio import Redis

log = logging.getLogger(__name__)

CHANNEL = "webhooks:invalidate"
RECONNECT_WAIT = 1.0


@dataclass(frozen=True, slots=True)
class Invalidation:
    kind: str  # "api_key", "webhook", or "all" (after a reconnect: drop everything)
    id: str | None = None
    account_id: str | None = None


Handler = Callable[[Invalidation], None]


class Invalidations:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._handlers: list[Handler] = []

    def on(self, handler: Handler) -> None:
        self._handlers.append(handler)

    def local(self, message: Invalidation) -> None:
        for handler in self._handlers:
            handler(message)

    async def publish(self, message: Invalidation) -> None:
        """Drop it here at once, then tell the other processes (best effort: their TTL is the backstop)."""
        self.local(message)
        try:
            await self._redis.publish(
                CHANNEL, orjson.dumps({"kind": message.kind, "id": message.id, "account": message.account_id})
            )
        except Exception:
            log.warning("could not publish a cache invalidation (%s)", message.kind, exc_info=True)

    async def listen_forever(self) -> None:
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    self.local(Invalidation("all"))  # anything missed before (re)subscribing
                    async for raw in pubsub.listen():
                        self._dispatch(raw.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("cache invalidation listener lost Redis; retrying", exc_info=True)
                await asyncio.sleep(RECONNECT_WAIT)

    def _dispatch(self, data: object) -> None:
        if not isinstance(data, bytes | str):
            return
        try:
            value = orjson.loads(data)
            message = Invalidation(str(value["kind"]), value.get("id"), value.get("account"))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("ignored a malformed cache invalidation")
            return
        self.local(message)


@contextlib.asynccontextmanager
async def listening(invalidations: Invalidations) -> AsyncIterator[None]:
    task = asyncio.create_task(invalidations.listen_forever())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
