"""An attempt that needs nothing read never waits for another webhook's reads; a backlog is read ahead.

A first attempt whose event came with its claim (the API's hand-off copy), to a webhook the worker holds in
its cache, is planned at once. Other attempts are loaded in batches, and a batch may be reading events from
a busy store: a backlog whose hand-off copies expired reads its events from MongoDB, and reads those of the
attempts waiting next in its lane with them, so its next claims find their events at hand.

Real parts: the API, MongoDB, the lanes and the hand-off in Redis, the delivery engine as a worker builds
it, and a loopback receiver. The store's event reads are held back until the other attempt has arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from bson import ObjectId

from tests.conftest import make_settings
from tests.delivery_support import create_webhook, publish, wait_for_status
from tests.receiver import Receiver
from tests.support import Stack, run_stack
from webhooks.lanes import Claimed
from webhooks.models import Event
from webhooks.timeutil import utcnow
from workers.engine import DeliveryEngine
from workers.sender import Sender
from workers.worker import build_engine


@pytest.fixture
async def stack(mongodb_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    async with run_stack(make_settings(mongodb_url, tmp_path), worker=False) as running:
        yield running


@pytest.fixture
async def copyless_stack(mongodb_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    """No hand-off copies: every event is read from MongoDB, as a backlog older than its copies is."""
    async with run_stack(make_settings(mongodb_url, tmp_path, event_handoff_ttl=0), worker=False) as running:
        yield running


async def claim(stack: Stack, count: int) -> list[Claimed]:
    """``count`` first attempts, claimed as a worker claims them (with their events' hand-off copies)."""
    claimed: list[Claimed] = []
    while len(claimed) < count:
        more, _ = await stack.core.lanes.claim(
            utcnow(), count, slot_seconds=30, attach=stack.core.handoff.key_prefix
        )
        claimed += more
        await asyncio.sleep(0.02)
    return claimed


def before_event_reads(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, before: Callable[[Sequence[ObjectId]], Awaitable[None]]
) -> None:
    """Every read of events from the store awaits ``before(ids)`` first, then reads them for real."""
    real_get_many = stack.core.event_repo.get_many

    async def reads(ids: Sequence[ObjectId]) -> dict[ObjectId, Event]:
        await before(ids)
        found: dict[ObjectId, Event] = await real_get_many(list(ids))
        return found

    monkeypatch.setattr(stack.core.event_repo, "get_many", reads)


@contextlib.asynccontextmanager
async def worker_engine(stack: Stack) -> AsyncIterator[DeliveryEngine]:
    """The delivery engine as a worker builds it, sending for real (to loopback)."""
    sender = Sender(timeout=stack.settings.delivery_timeout, allow_private=True)
    try:
        yield build_engine(stack.settings, stack.core, sender)
    finally:
        await sender.close()


async def test_an_attempt_with_its_event_at_hand_does_not_wait_for_another_webhooks_store_reads(
    stack: Stack, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given two accounts' webhooks, each with one event published while no worker runs
    a, b = await stack.account(), await stack.account()
    slow, fast = f"/backlog/{uuid.uuid4().hex[:6]}", f"/fresh/{uuid.uuid4().hex[:6]}"
    await create_webhook(a.gql, receiver.url(slow))
    fresh_hook, _ = await create_webhook(b.gql, receiver.url(fast))
    backlog, fresh = await publish(a.gql), await publish(b.gql)
    # and both first attempts claimed; A's event copy has expired, B's came with its claim
    claimed = {c.item.event_id: c for c in await claim(stack, 2)}
    a_claim, b_claim = claimed[backlog["event"]["id"]], claimed[fresh["event"]["id"]]
    assert b_claim.attached is not None
    await stack.core.redis.delete(stack.core.handoff.key_prefix + backlog["event"]["id"])
    a_claim = replace(a_claim, attached=None)
    # and B's webhook is in the worker's cache, as an active webhook's is
    await stack.core.webhook_cache.get_many({ObjectId(fresh_hook)})
    # and the store's event reads do not answer for now
    reads_may_go = asyncio.Event()
    read_asked = asyncio.Event()

    async def held(ids: Sequence[ObjectId]) -> None:
        read_asked.set()
        await reads_may_go.wait()

    before_event_reads(stack, monkeypatch, held)
    async with worker_engine(stack) as engine:
        # when one worker's engine makes both attempts, A's first
        runs = [asyncio.create_task(engine.run(c)) for c in (a_claim, b_claim)]
        await asyncio.wait_for(read_asked.wait(), 10)
        # then B's attempt reaches its receiver while A's event is still being read
        await receiver.wait_for(fast, 1)
        assert receiver.received[slow] == []
        # and A's is made once the store answers
        reads_may_go.set()
        await asyncio.gather(*runs)
        await receiver.wait_for(slow, 1)
    for published, account in ((backlog, a), (fresh, b)):
        await wait_for_status(account.gql, published["event"]["deliveries"][0]["id"], "SUCCEEDED")


async def test_a_backlog_without_hand_off_copies_is_read_from_the_store_in_few_large_reads(
    copyless_stack: Stack, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = copyless_stack
    # given one webhook with 100 events waiting in its lane, none of them with a hand-off copy
    account = await stack.account()
    path = f"/backlog/{uuid.uuid4().hex[:6]}"
    await create_webhook(account.gql, receiver.url(path))
    events = 100
    for _ in range(events // 10):
        await asyncio.gather(*(publish(account.gql) for _ in range(10)))
    # and the store's event reads counted
    reads: list[int] = []

    async def counted(ids: Sequence[ObjectId]) -> None:
        reads.append(len(ids))

    before_event_reads(stack, monkeypatch, counted)
    async with worker_engine(stack) as engine:
        # when a worker's engine makes them as they are claimed, at most the webhook's limit (10) at a time
        claims = 0
        while len(receiver.received[path]) < events:
            claimed, _ = await stack.core.lanes.claim(utcnow(), events, slot_seconds=30)
            assert claimed, "the lane ran dry before every event arrived"
            claims += 1
            await asyncio.gather(*(engine.run(c) for c in claimed))
    # then every event arrived, once each
    assert len(receiver.received[path]) == events
    assert claims >= events // 10
    # and the store was asked for events in a few large reads, not once per claim
    assert sum(reads) == events
    assert len(reads) <= events // 40
