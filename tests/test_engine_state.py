"""The delivery engine while its webhook changes under it: updates, disables and deletes that land while
attempts are in flight or queued.

Real parts: Redis lanes, SecantusDB, the API over HTTP, an in-process worker and a loopback receiver whose
answers the test releases.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from bson import ObjectId

from tests.conftest import make_settings, session_redis_url
from tests.delivery_support import create_webhook, poll, publish, wait_for_attempt_count, wait_for_status
from tests.receiver import Receiver, ok, sequence, status
from tests.support import Stack, run_stack
from webhooks.lanes import Lanes
from webhooks.timeutil import utcnow


@pytest.fixture(scope="module")
async def stack(mongodb_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    settings = make_settings(
        mongodb_url,
        tmp_path_factory.mktemp("engine_state"),
        delivery_timeout=5.0,
        retry_schedule=(0.0, 0.3, 0.3),
    )
    async with run_stack(settings) as running:
        yield running


@pytest.fixture
async def lanes(stack: Stack) -> AsyncIterator[Lanes]:
    client = aioredis.Redis.from_url(session_redis_url())
    try:
        yield Lanes(client, stack.settings.queue_name)
    finally:
        await client.aclose()


CREATE_ORDERED = """
mutation($input: CreateWebhookInput!) {
  createWebhook(input: $input) { webhook { id } errors { field code message } }
}"""
UPDATE = """
mutation($id: ID!, $input: UpdateWebhookInput!) {
  updateWebhook(id: $id, input: $input) { webhook { id maxInFlight } errors { field code message } }
}"""


@dataclass
class Held:
    """A receiver behaviour: the first ``held`` requests wait for the test to answer them (with the status it
    gives); later ones are answered 200 after ``hold`` seconds. It counts the requests it holds at once,
    and the peak of that count as seen by each request after the first ``held``."""

    held: int
    hold: float
    answers: dict[int, asyncio.Future[int]] = field(default_factory=dict)
    now: int = 0
    peak_after: int = 0

    def answer(self, n: int, status: int) -> None:
        self.answers.setdefault(n, asyncio.get_running_loop().create_future()).set_result(status)

    async def __call__(self, request: web.Request, n: int) -> web.StreamResponse:
        self.now += 1
        try:
            if n < self.held:
                status = await self.answers.setdefault(n, asyncio.get_running_loop().create_future())
                return web.Response(status=status, text="held")
            self.peak_after = max(self.peak_after, self.now)
            await asyncio.sleep(self.hold)
            return web.Response(text="OK")
        finally:
            self.now -= 1


async def test_a_retry_queued_after_max_in_flight_is_lowered_keeps_the_new_limit(
    stack: Stack, receiver: Receiver, lanes: Lanes
) -> None:
    # given a webhook allowed 3 attempts at once, whose endpoint holds the first three requests
    account = await stack.account()
    behaviour = Held(held=3, hold=0.3)
    path = f"/lowered/{uuid.uuid4().hex[:6]}"
    webhook_id, _ = await create_webhook(account.gql, receiver.url(path, behaviour))
    assert (await account.gql.execute(UPDATE, {"id": webhook_id, "input": {"maxInFlight": 3}}))[
        "updateWebhook"
    ]["errors"] == []
    first = [await publish(account.gql) for _ in range(3)]
    await receiver.wait_for(path, 3)
    # when its limit is lowered to 1 while those three are in flight, three more events wait in its lane,
    updated = await account.gql.execute(UPDATE, {"id": webhook_id, "input": {"maxInFlight": 1}})
    assert updated["updateWebhook"]["webhook"]["maxInFlight"] == 1
    later = [await publish(account.gql) for _ in range(3)]
    # one of the three in flight fails and its retry is queued,
    behaviour.answer(0, 500)
    retried = first[0]["event"]["deliveries"][0]["id"]

    async def queued() -> list[Any]:
        return [i for i in await lanes.upcoming([webhook_id], 20) if i.delivery_id == retried]

    await poll(queued, lambda items: bool(items))
    # and then the other two succeed
    behaviour.answer(1, 200)
    behaviour.answer(2, 200)
    ids = [p["event"]["deliveries"][0]["id"] for p in first + later]
    for delivery_id in ids:
        await wait_for_status(account.gql, delivery_id, "SUCCEEDED", timeout=30)
    # then the retry and the three waiting deliveries went one at a time, never beside another attempt
    assert len(receiver.received[path]) == 7
    assert behaviour.peak_after == 1


RETRY = "mutation($id: ID!) { retryDelivery(id: $id) { delivery { id status } errors { code } } }"


async def test_a_manual_retry_of_an_ordered_delivery_never_holds_up_later_ones_of_its_resource(
    mongodb_url: str, tmp_path: Path, receiver: Receiver, redis_client: aioredis.Redis
) -> None:
    settings = make_settings(
        mongodb_url,
        tmp_path,
        retry_schedule=(0.0, 0.1),
        sweep_interval=0.5,
        sweep_grace=0.2,
        delivery_timeout=60.0,
    )
    async with run_stack(settings) as stack:
        account = await stack.account()
        # given a PER_RESOURCE webhook whose first delivery failed, and is retried by hand while its
        # endpoint holds that manual attempt
        release: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def ordered(request: web.Request, n: int) -> web.StreamResponse:
            if n < 2:
                return web.Response(status=500)
            if n == 2:
                await release
            return web.Response(text="OK")

        p = f"/manual/{uuid.uuid4().hex[:6]}"
        payload = await account.gql.execute(
            CREATE_ORDERED,
            {
                "input": {
                    "name": "ordered",
                    "url": receiver.url(p, ordered),
                    "events": ["JOB_APPLICATION_CREATED"],
                    "ordering": "PER_RESOURCE",
                }
            },
        )
        assert payload["createWebhook"]["errors"] == []
        first = (await publish(account.gql))["event"]["deliveries"][0]["id"]
        await wait_for_status(account.gql, first, "FAILED")
        retried = await account.gql.execute(RETRY, {"id": first})
        assert retried["retryDelivery"]["errors"] == []
        await receiver.wait_for(p, 3)
        # and the sweeper has since gone past that overdue manual attempt: it re-queued a canary, a
        # delivery of another webhook whose retry was lost from Redis and fell due after it
        canary_path = f"/canary/{uuid.uuid4().hex[:6]}"
        canary_hook, _ = await create_webhook(
            account.gql,
            receiver.url(canary_path, sequence(status(503, {"Retry-After": "60"}), ok)),
            events=["JOB_CREATED"],
        )
        canary = (await publish(account.gql, event="JOB_CREATED"))["event"]["deliveries"][0]["id"]
        await wait_for_attempt_count(account.gql, canary, 1)
        lane = f"{settings.queue_name}:lane:{canary_hook}"
        assert await poll(lambda: redis_client.zcard(lane), lambda n: n == 1)
        await redis_client.delete(lane)
        await stack.core.client[settings.mongodb_database]["deliveries"].update_one(
            {"_id": ObjectId(canary)}, {"$set": {"next_attempt_at": utcnow()}}
        )
        await wait_for_status(account.gql, canary, "SUCCEEDED")
        # when a later event of the same resource is published
        later = (await publish(account.gql))["event"]["deliveries"][0]["id"]
        # then it is delivered while the manual attempt is still held (manual runs are outside the order)
        done = await wait_for_status(account.gql, later, "SUCCEEDED", timeout=20)
        assert not release.done()
        release.set_result(None)
        assert done["attempts"][0]["statusCode"] == 200
        await wait_for_status(account.gql, first, "SUCCEEDED")
    # and the manual attempt reached the endpoint once
    bodies = [r.headers["X-Webhook-Delivery"] for r in receiver.received[p]]
    assert bodies.count(first) == 3
