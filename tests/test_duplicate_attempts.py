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
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import make_settings
from tests.delivery_support import PUBLISH, publish_input, wait_for_status
from tests.receiver import Receiver, status
from tests.support import Stack, run_stack
from webhooks.lanes import Claimed
from webhooks.timeutil import utcnow
from workers.engine import DeliveryEngine
from workers.sender import Sender

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


def engine(stack: Stack, sender: Sender) -> DeliveryEngine:
    core, settings = stack.core, stack.settings
    return DeliveryEngine(
        settings=settings,
        deliveries=core.delivery_repo,
        events=core.event_repo,
        webhooks=core.webhook_repo,
        webhook_cache=core.webhook_cache,
        box=core.box,
        lanes=core.lanes,
        handoff=core.handoff,
        publisher=core.publisher,
        sender=sender,
        publish_system=core.deliveries.publish_system,
    )


async def test_an_attempt_made_by_two_workers_counts_one_failure(stack: Stack, receiver: Receiver) -> None:
    # given a webhook whose endpoint answers 500, and the first attempt of one of its deliveries claimed
    account = await stack.account()
    path = f"/dup/{uuid.uuid4().hex[:8]}"
    created = await account.gql.execute(
        CREATE,
        {
            "input": {
                "name": "Dup",
                "url": receiver.url(path, status(500)),
                "events": ["JOB_APPLICATION_CREATED"],
            }
        },
    )
    webhook_id = created["createWebhook"]["webhook"]["id"]
    published = await account.gql.execute(PUBLISH, {"input": publish_input()})
    delivery_id = published["publishEvent"]["event"]["deliveries"][0]["id"]
    claimed, _ = await stack.core.lanes.claim(utcnow(), 10, slot_seconds=30)
    assert [c.item.delivery_id for c in claimed] == [delivery_id]

    # when two workers' engines make that same attempt at once
    settings = stack.settings
    senders = [Sender(timeout=settings.delivery_timeout, allow_private=True) for _ in range(2)]
    try:
        await asyncio.gather(*(engine(stack, s).run(claimed[0]) for s in senders))
    finally:
        for s in senders:
            await s.close()

    # then the receiver got it twice, but the delivery holds one attempt and the webhook one failure
    assert len(await receiver.wait_for(path, 2)) == 2
    await wait_for_status(account.gql, delivery_id, "FAILED")
    delivery = (await account.gql.execute(ATTEMPTS, {"id": delivery_id}))["delivery"]
    assert delivery["attempts"] == [{"number": 1, "statusCode": 500}]
    webhook = (await account.gql.execute(WEBHOOK, {"id": webhook_id}))["webhook"]
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
    account = await stack.account()
    path = f"/dup/{uuid.uuid4().hex[:8]}"
    created = await account.gql.execute(
        CREATE,
        {
            "input": {
                "name": "Dup",
                "url": receiver.url(path, status(500)),
                "events": ["JOB_APPLICATION_CREATED"],
            }
        },
    )
    webhook_id = created["createWebhook"]["webhook"]["id"]
    published = await account.gql.execute(PUBLISH, {"input": publish_input()})
    delivery_id = published["publishEvent"]["event"]["deliveries"][0]["id"]
    settings = stack.settings
    senders = [Sender(timeout=settings.delivery_timeout, allow_private=True) for _ in range(2)]
    try:
        first, _ = await stack.core.lanes.claim(utcnow(), 10, slot_seconds=30)
        await engine(stack, senders[0]).run(first[0])
        retry: list[Claimed] = []
        while not retry:  # the retry falls due 0.1 s after the first attempt
            retry, _ = await stack.core.lanes.claim(utcnow(), 10, slot_seconds=30)
            await asyncio.sleep(0.05)
        assert [(c.item.delivery_id, c.item.number) for c in retry] == [(delivery_id, 2)]

        # when two workers' engines make that retry at once
        await asyncio.gather(*(engine(stack, s).run(retry[0]) for s in senders))
    finally:
        for s in senders:
            await s.close()

    # then the receiver got three requests, but the delivery holds two attempts and the webhook one failure
    assert len(await receiver.wait_for(path, 3)) == 3
    await wait_for_status(account.gql, delivery_id, "FAILED")
    delivery = (await account.gql.execute(ATTEMPTS, {"id": delivery_id}))["delivery"]
    assert delivery["attempts"] == [{"number": 1, "statusCode": 500}, {"number": 2, "statusCode": 500}]
    webhook = (await account.gql.execute(WEBHOOK, {"id": webhook_id}))["webhook"]
    assert webhook == {"consecutiveFailures": 1, "enabled": True}
