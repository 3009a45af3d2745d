"""The dispatcher's room for claims made with a release (``reserve`` and ``adopt``), on real lanes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests.conftest import session_redis_url
from webhooks.lanes import Claimed, Enqueue, Finished, Kind, LaneItem, Lanes, Outcome
from webhooks.timeutil import utcnow
from workers.dispatcher import Dispatcher


class Attempts:
    """Attempts that run until they are let go."""

    def __init__(self) -> None:
        self.started: list[Claimed] = []
        self.go = asyncio.Event()

    async def __call__(self, claimed: Claimed) -> None:
        self.started.append(claimed)
        await self.go.wait()


@pytest.fixture
async def redis() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(session_redis_url())
    yield client
    await client.aclose()


@pytest.fixture
def lanes(redis: aioredis.Redis) -> Lanes:
    return Lanes(redis, f"test-dispatch:{uuid.uuid4().hex[:8]}", default_limit=10)


def item(n: int) -> LaneItem:
    return LaneItem("d" * 24, f"{n:024x}", 1, "e" * 24, Kind.NEW)


async def test_a_claim_made_with_a_release_stays_within_the_workers_room(
    redis: aioredis.Redis, lanes: Lanes
) -> None:
    # given a worker with room for 3 attempts, 2 of them running, and 5 due attempts in a lane
    attempts = Attempts()
    dispatcher = Dispatcher(redis=redis, lanes=lanes, attempt=attempts, max_in_flight=3)
    await lanes.add([Enqueue(item(n), due=utcnow(), limit=10) for n in range(5)])
    running, _ = await lanes.claim(utcnow(), 2, slot_seconds=5)
    first = dispatcher.reserve()
    assert first is not None and first.max_items == 3
    dispatcher.adopt(first, running)
    # when one finishes and its release claims with the room that is left
    request = dispatcher.reserve()
    assert request is not None and request.max_items == 1
    assert dispatcher.reserve() is None  # that room is held until adopted
    _, again = await lanes.release_then_claim(
        [Finished(running[0].item, Outcome.OK)], utcnow(), open_after=3, claim=request
    )
    dispatcher.adopt(request, again)
    await asyncio.sleep(0)
    # then it took one attempt, and the worker runs 3: no room is left for any claim
    assert len(again) == 1 and len(attempts.started) == 3
    assert dispatcher.in_flight == 3 and dispatcher.reserve() is None
    # and once it stops claiming, it reserves nothing, and its drain waits for every attempt it runs
    dispatcher.stop_claiming()
    attempts.go.set()
    await dispatcher.drain(5)
    assert dispatcher.in_flight == 0 and dispatcher.reserve() is None
