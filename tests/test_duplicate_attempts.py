"""An attempt made twice is recorded once.

Two workers can make the same attempt: one whose slot expired while it still ran (a stalled process), and
the one that claimed it afterwards. The receiver then gets it twice (at-least-once delivery; the
``webhook-id`` header lets it drop the second), but the delivery must hold one outcome: the second counts
no failure towards auto-disable, queues no retry and sends no notice.

Real parts: the API, MongoDB, the lanes in Redis, two delivery engines as two workers build them, and a
loopback receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from bson import ObjectId

from tests.conftest import make_settings
from tests.delivery_support import PUBLISH, publish_input, wait_for_status
from tests.receiver import Behaviour, Receiver
from tests.support import Account, Stack, run_stack
from webhooks.db import raw_collections
from webhooks.lanes import Claimed
from webhooks.timeutil import utcnow
from workers.engine import DeliveryEngine
from workers.sender import Sender
from workers.worker import build_engine

CREATE = """
mutation($input: CreateWebhookInput!) {
  createWebhook(input: $input) { webhook { id } errors { field code message } }
}"""
WEBHOOK = "query($id: ID!) { webhook(id: $id) { consecutiveFailures enabled } }"
ATTEMPTS = "query($id: ID!) { delivery(id: $id) { status attempts { number statusCode } } }"


@pytest.fixture
async def stack(mongodb_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    # one attempt per delivery: a failed attempt makes its delivery FAILED, which counts towards auto-disable
    settings = make_settings(mongodb_url, tmp_path, retry_schedule=(0.0,))
    async with run_stack(settings, worker=False) as running:
        yield running


@dataclass(frozen=True)
class Failing:
    """A delivery to a webhook whose endpoint answers 500, published with no worker running."""

    account: Account
    webhook_id: str
    delivery_id: str
    path: str


def fails_together(receiver: Receiver, path: str, arrived: list[int]) -> Behaviour:
    """500, once ``arrived[n]`` requests (the last entry repeats) have reached ``path`` (or after 10 s): the
    two copies of an attempt are then both sent, so both were loaded, before either can be recorded."""

    async def answer(request: web.Request, n: int) -> web.StreamResponse:
        wanted = arrived[min(n, len(arrived) - 1)]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10), receiver.arrived:
                await receiver.arrived.wait_for(lambda: len(receiver.received[path]) >= wanted)
        return web.Response(status=500, text="status 500")

    return answer


async def failing_delivery(stack: Stack, receiver: Receiver, arrived: list[int]) -> Failing:
    account = await stack.account()
    path = f"/dup/{uuid.uuid4().hex[:8]}"
    url = receiver.url(path, fails_together(receiver, path, arrived))
    hook = {"name": "Dup", "url": url, "events": ["JOB_APPLICATION_CREATED"]}
    created = await account.gql.execute(CREATE, {"input": hook})
    published = await account.gql.execute(PUBLISH, {"input": publish_input()})
    delivery_id = published["publishEvent"]["event"]["deliveries"][0]["id"]
    return Failing(account, created["createWebhook"]["webhook"]["id"], delivery_id, path)


@contextlib.asynccontextmanager
async def two_workers(stack: Stack) -> AsyncIterator[list[DeliveryEngine]]:
    """Two delivery engines, each with its own sender, as two worker processes would have them."""
    senders = [Sender(timeout=stack.settings.delivery_timeout, allow_private=True) for _ in range(2)]
    try:
        yield [build_engine(stack.settings, stack.core, s) for s in senders]
    finally:
        for s in senders:
            await s.close()


async def claim_one(stack: Stack) -> Claimed:
    """The one attempt due, once it is due."""
    claimed: list[Claimed] = []
    while not claimed:
        claimed, _ = await stack.core.lanes.claim(utcnow(), 10, slot_seconds=30)
        if not claimed:
            await asyncio.sleep(0.05)
    assert len(claimed) == 1
    return claimed[0]


async def test_an_attempt_made_by_two_workers_counts_one_failure(stack: Stack, receiver: Receiver) -> None:
    # given a webhook whose endpoint answers 500, and the first attempt of one of its deliveries claimed
    failing = await failing_delivery(stack, receiver, arrived=[2])
    claimed = await claim_one(stack)
    assert claimed.item.delivery_id == failing.delivery_id

    # when two workers' engines make that same attempt at once
    async with two_workers(stack) as engines:
        await asyncio.gather(*(e.run(claimed) for e in engines))

    # then the receiver got it twice, but the delivery holds one attempt and the webhook one failure
    gql = failing.account.gql
    assert len(await receiver.wait_for(failing.path, 2)) == 2
    await wait_for_status(gql, failing.delivery_id, "FAILED")
    delivery = (await gql.execute(ATTEMPTS, {"id": failing.delivery_id}))["delivery"]
    assert delivery["attempts"] == [{"number": 1, "statusCode": 500}]
    webhook = (await gql.execute(WEBHOOK, {"id": failing.webhook_id}))["webhook"]
    assert webhook == {"consecutiveFailures": 1, "enabled": True}


@pytest.fixture
async def retrying(mongodb_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    # two attempts per delivery: the second is a retry, appended to the delivery document
    settings = make_settings(mongodb_url, tmp_path, retry_schedule=(0.0, 0.1))
    async with run_stack(settings, worker=False) as running:
        yield running


async def test_a_retry_made_by_two_workers_is_appended_once(retrying: Stack, receiver: Receiver) -> None:
    # given a failing endpoint's delivery whose first attempt was made, and its retry claimed
    stack = retrying
    failing = await failing_delivery(stack, receiver, arrived=[1, 3])
    async with two_workers(stack) as engines:
        await engines[0].run(await claim_one(stack))
        retry = await claim_one(stack)  # due 0.1 s after the first attempt
        assert (retry.item.delivery_id, retry.item.number) == (failing.delivery_id, 2)

        # when two workers' engines make that retry at once
        await asyncio.gather(*(e.run(retry) for e in engines))

    # then the receiver got three requests, but the delivery holds two attempts and the webhook one failure
    gql = failing.account.gql
    assert len(await receiver.wait_for(failing.path, 3)) == 3
    await wait_for_status(gql, failing.delivery_id, "FAILED")
    delivery = (await gql.execute(ATTEMPTS, {"id": failing.delivery_id}))["delivery"]
    assert delivery["attempts"] == [{"number": 1, "statusCode": 500}, {"number": 2, "statusCode": 500}]
    webhook = (await gql.execute(WEBHOOK, {"id": failing.webhook_id}))["webhook"]
    assert webhook == {"consecutiveFailures": 1, "enabled": True}


async def test_a_first_attempt_made_twice_does_not_close_its_outbox_before_the_others_are_written(
    stack: Stack, receiver: Receiver
) -> None:
    # given events published together, so that several share one batch outbox, each for one webhook
    account = await stack.account()
    path = f"/batch/{uuid.uuid4().hex[:8]}"
    hook = {"name": "Batch", "url": receiver.url(path), "events": ["JOB_APPLICATION_CREATED"]}
    await account.gql.execute(CREATE, {"input": hook})
    await asyncio.gather(*(account.gql.execute(PUBLISH, {"input": publish_input()}) for _ in range(10)))
    outbox = await raw_collections(stack.core).events.find_one(
        {"account_id": ObjectId(account.id), "events.1": {"$exists": True}}
    )
    assert outbox is not None, "no two of the ten publishes shared a batch outbox"
    first, second = (e["planned"][0]["delivery_id"] for e in outbox["events"][:2])
    claimed = {c.item.delivery_id: c for c in await claim_all(stack, 10)}
    # when one worker makes the first event's attempt, and then the same attempt once more (its slot had
    # expired, say, and the worker claimed it again): the second is a duplicate, recorded nowhere
    async with two_workers(stack) as engines:
        for _ in range(2):
            await engines[0].run(claimed[str(first)])
    # then the outbox still holds the other events, whose deliveries are not written yet: they stay in the
    # delivery log, and the sweeper would still find them if their attempts were lost
    assert len(await receiver.wait_for(path, 2)) == 2
    await wait_for_status(account.gql, str(first), "SUCCEEDED")
    still = (await account.gql.execute(ATTEMPTS, {"id": str(second)}))["delivery"]
    assert still == {"status": "PENDING", "attempts": []}


async def claim_all(stack: Stack, count: int) -> list[Claimed]:
    claimed: list[Claimed] = []
    async with asyncio.timeout(20):
        while len(claimed) < count:
            more, _ = await stack.core.lanes.claim(utcnow(), count, slot_seconds=30)
            claimed += more
            await asyncio.sleep(0.02)
    return claimed
