"""A store error in one step of a batch costs that step only, never the other attempts of the batch.

The engine loads and records attempts in batches shared by every webhook and account a worker serves. A
failed write (a failover, an ``AutoReconnect``) used to fail the whole batch: a load batch left its healthy
attempts marked in flight, so the worker skipped them as duplicates of themselves until it restarted; a
failed failure count skipped the rest of the batch's follow-up (retries, the live feed).

Real parts: the API, MongoDB, the lanes in Redis, the delivery engine as a worker builds it, a loopback
receiver and the live feed's Redis channel. Only the one failing store write is replaced, by one that raises
once and then writes for real.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from tests.conftest import make_settings
from tests.delivery_support import create_webhook, delivery, publish, wait_for_status
from tests.receiver import Receiver, status
from tests.support import Stack, run_stack
from tests.test_engine_loads import claim, worker_engine
from webhooks.db import raw_collections
from webhooks.pubsub import ATTEMPTS_CHANNEL
from workers.sender import Sender, SendResult

DISABLE = """mutation($id: ID!) {
  updateWebhook(id: $id, input: {enabled: false}) { webhook { enabled } errors { code } } }"""


@pytest.fixture
async def stack(mongodb_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    async with run_stack(make_settings(mongodb_url, tmp_path), worker=False) as running:
        yield running


def fails_once(real: Callable[..., Any]) -> Callable[..., Any]:
    """``real``, except that its first call raises as a lost connection to the store would."""
    calls = 0

    async def write(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("the store went away")
        return await real(*args, **kwargs)

    return write


async def test_a_failed_write_of_unsent_deliveries_does_not_hold_back_the_batchs_others(
    stack: Stack, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given one event for two webhooks, one of them disabled since (its attempt is to be recorded HELD)
    account = await stack.account()
    healthy, held = f"/healthy/{uuid.uuid4().hex[:6]}", f"/held/{uuid.uuid4().hex[:6]}"
    await create_webhook(account.gql, receiver.url(healthy), name="healthy")
    held_id, _ = await create_webhook(account.gql, receiver.url(held), name="held")
    event = await publish(account.gql)
    assert (await account.gql.execute(DISABLE, {"id": held_id}))["updateWebhook"]["errors"] == []
    by_hook = {d["webhookId"]: d["id"] for d in event["event"]["deliveries"]}
    claimed = await claim(stack, 2)
    # and a store that loses the write of the HELD record once
    repo = stack.core.delivery_repo
    monkeypatch.setattr(repo, "record_unsent", fails_once(repo.record_unsent))
    # when a worker loads both attempts in one batch (neither webhook in its cache yet)
    async with worker_engine(stack) as engine:
        await asyncio.gather(*(engine.run(c) for c in claimed))
    # then the healthy webhook's attempt went out and is recorded
    assert len(receiver.received[healthy]) == 1
    healthy_id = next(d for w, d in by_hook.items() if w != held_id)
    assert (await delivery(account.gql, healthy_id))["status"] == "SUCCEEDED"
    # and the held one is not lost: still pending, for the sweeper to queue again
    assert (await delivery(account.gql, by_hook[held_id]))["status"] == "PENDING"
    assert held not in receiver.received


async def test_a_failed_failure_count_still_queues_the_batchs_retries_and_feeds_its_attempts(
    stack: Stack, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a webhook with failures behind it (its next success resets its count: a write), another that
    # answers 500 (its attempt needs a retry), and a subscriber to the live feed
    account = await stack.account()
    recovering, failing = f"/recovering/{uuid.uuid4().hex[:6]}", f"/failing/{uuid.uuid4().hex[:6]}"
    recovering_id, _ = await create_webhook(account.gql, receiver.url(recovering), name="recovering")
    await create_webhook(account.gql, receiver.url(failing, status(500)), name="failing")
    await raw_collections(stack.core).webhooks.update_one(
        {"_id": ObjectId(recovering_id)}, {"$set": {"consecutive_failures": 3}}
    )
    event = await publish(account.gql)
    failing_id = next(d["id"] for d in event["event"]["deliveries"] if d["webhookId"] != recovering_id)
    feed = stack.core.redis.pubsub()
    await feed.subscribe(ATTEMPTS_CHANNEL)
    # and a store that loses the reset of the count once
    webhooks = stack.core.webhook_repo
    monkeypatch.setattr(webhooks, "reset_failures", fails_once(webhooks.reset_failures))
    # (both answers are held until both have come back, so one batch records them: as under load)
    both, answered = asyncio.Event(), 0
    real_send = Sender.send

    async def send_together(sender: Sender, url: str, body: bytes, headers: dict[str, str]) -> SendResult:
        nonlocal answered
        result = await real_send(sender, url, body, headers)
        answered += 1
        if answered == 2:
            both.set()
        await both.wait()
        return result

    monkeypatch.setattr(Sender, "send", send_together)
    try:
        async with worker_engine(stack) as engine:
            # when a worker makes both first attempts
            await asyncio.gather(*(engine.run(c) for c in await claim(stack, 2)))
            # then the failed attempt reaches the live feed
            fed = ""
            async with asyncio.timeout(10):
                while failing_id not in fed:
                    message = await feed.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    fed = str(message["data"]) if message is not None else ""
            # and its retry is queued: due a second later, a worker claims it and the receiver gets it again
            async with asyncio.timeout(20):
                retry = await claim(stack, 1)
            await engine.run(retry[0])
    finally:
        await feed.aclose()
    assert len(receiver.received[failing]) == 2
    found = await wait_for_status(account.gql, failing_id, "PENDING")
    assert [a["number"] for a in found["attempts"]] == [1, 2]
