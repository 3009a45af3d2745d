"""Per-account rate limits: fixed one-minute windows counted in Redis (shared by every API process).

Not the ``limits`` package: this is one ``INCR``+``EXPIRE`` pipeline on the Redis pool the process already
holds, while ``limits``' async Redis storage opens its own client (coredis or a second redis-py pool) for it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from enum import Enum

from bson import ObjectId
from redis.asyncio import Redis
from redis.exceptions import RedisError

from webhooks.errors import ErrorCode, UserErrors
from webhooks.settings import Settings

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60
KEY_PREFIX = "webhooks:ratelimit"


class Action(Enum):
    PUBLISH_EVENT = "publishEvent"
    TEST_WEBHOOK = "testWebhook"


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    limit: int
    count: int
    retry_after: int  # seconds until the window resets


class RateLimiter:
    """``INCR`` + ``EXPIRE`` on a key per (action, account, minute): O(1), atomic, self-cleaning."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._limits = {
            Action.PUBLISH_EVENT: settings.rate_limit_publish_per_minute,
            Action.TEST_WEBHOOK: settings.rate_limit_test_per_minute,
        }

    async def hit(self, action: Action, account_id: ObjectId, *, now: float | None = None) -> Verdict:
        now = time.time() if now is None else now
        window = int(now // WINDOW_SECONDS)
        key = f"{KEY_PREFIX}:{action.value}:{account_id}:{window}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, WINDOW_SECONDS * 2)
            count, _ = await pipe.execute()
        limit = self._limits[action]
        retry_after = max(1, int((window + 1) * WINDOW_SECONDS - now))
        return Verdict(allowed=int(count) <= limit, limit=limit, count=int(count), retry_after=retry_after)

    async def check(self, action: Action, account_id: ObjectId) -> None:
        """Count one call; raise ``RATE_LIMITED`` when the account is over its limit for this minute.

        Without Redis the call is let through uncounted: what it protects (a publish, a test) is written to
        MongoDB first and queued by the sweeper once Redis is back, so refusing it would turn a Redis outage
        into lost events on the caller's side."""
        try:
            verdict = await self.hit(action, account_id)
        except (RedisError, OSError) as exc:
            log.warning("rate limit of %s not counted: Redis failed (%s)", action.value, type(exc).__name__)
            return
        if not verdict.allowed:
            raise UserErrors.one(
                None,
                ErrorCode.RATE_LIMITED,
                f"{action.value} is limited to {verdict.limit} calls per minute per account; "
                f"try again in {verdict.retry_after} s",
            )
