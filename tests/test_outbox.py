"""The outbox: events stored together share one batch outbox document, which one write deletes once their
deliveries are written; an event stored alone, with an idempotency key or by an earlier version is its own
outbox, closed by unsetting its flag. Real SecantusDB, Redis, worker and receiver."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from bson import ObjectId

from tests.conftest import make_settings
from tests.delivery_support import create_webhook, delivery, publish, until_closed, wait_for_status
from tests.receiver import Receiver
from tests.support import Stack, run_stack, run_worker
from webhooks.db import Doc, raw_collections
from webhooks.models import Event, OutboxRef, Planned
from webhooks.repositories.events import BATCH_OUTBOX_EVENTS
from webhooks.timeutil import utcnow
from workers.sweeper import Sweeper

RETENTION = timedelta(days=1)


@pytest.fixture(scope="module")
async def stack(mongodb_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    settings = make_settings(mongodb_url, tmp_path_factory.mktemp("outbox"), sweep_interval=1, sweep_grace=1)
    async with run_stack(settings, worker=False) as running:
        yield running


def outboxes_listing(event_ids: list[ObjectId]) -> Doc:
    return {"open": True, "events._id": {"$in": event_ids}}


def an_event(account_id: ObjectId, *, planned: int = 1, delivery_id: ObjectId | None = None) -> Event:
    plans = [Planned(delivery_id or ObjectId(), ObjectId(), held=False) for _ in range(planned)]
    return Event(ObjectId(), account_id, "job_application_created", b'{"x":1}', utcnow(), tuple(plans))


async def test_events_published_together_are_kept_open_by_one_outbox_each_until_delivered(
    stack: Stack, receiver: Receiver
) -> None:
    # given an account with two webhooks, and no worker running yet
    account = await stack.account()
    paths = [f"/outbox/{uuid.uuid4().hex[:6]}" for _ in range(2)]
    for p in paths:
        await create_webhook(account.gql, receiver.url(p))
    # when 12 events are published at once
    published = await asyncio.gather(*(publish(account.gql) for _ in range(12)))
    event_ids = [ObjectId(p["event"]["id"]) for p in published]
    delivery_ids = [d["id"] for p in published for d in p["event"]["deliveries"]]
    # then each event is kept open by exactly one outbox: the batch outbox that lists it (and that it names),
    # or itself when its write stored no other event of the account
    events = raw_collections(stack.core).events
    stored = await events.find({"_id": {"$in": event_ids}}).to_list()
    assert len(stored) == 12
    outboxes = await events.find(outboxes_listing(event_ids)).to_list()
    listed = [e["_id"] for o in outboxes for e in o["events"]]
    alone = [e["_id"] for e in stored if e.get("open") is True]
    assert sorted(listed + alone) == sorted(event_ids)
    assert all(len(o["events"]) >= 2 and o["account_id"] == ObjectId(account.id) for o in outboxes)
    named = {e["_id"]: e["outbox"]["id"] for e in stored if "outbox" in e}
    assert named == {e["_id"]: o["_id"] for o in outboxes for e in o["events"]}
    # and each unwritten delivery is PENDING, found by id in its outbox
    pending = await asyncio.gather(*(delivery(account.gql, i) for i in delivery_ids))
    assert {d["status"] for d in pending} == {"PENDING"}
    # when a worker delivers them
    async with run_worker(stack.settings):
        done = [wait_for_status(account.gql, i, "SUCCEEDED", timeout=60) for i in delivery_ids]
        await asyncio.gather(*done)
        # then no outbox keeps them open (batch outboxes deleted, flags unset), and the events stay
        await until_closed(events, event_ids)
    assert await events.count_documents({"_id": {"$in": event_ids}, "body": {"$exists": True}}) == 12


async def test_an_event_with_an_idempotency_key_is_its_own_outbox_until_delivered(
    stack: Stack, receiver: Receiver
) -> None:
    # given an account with a webhook
    account = await stack.account()
    p = f"/outbox-key/{uuid.uuid4().hex[:6]}"
    await create_webhook(account.gql, receiver.url(p))
    # when an event is published with an idempotency key
    published = await publish(account.gql, idempotencyKey=f"key-{uuid.uuid4().hex}")
    event_id = ObjectId(published["event"]["id"])
    (planned,) = published["event"]["deliveries"]
    # then the event itself is open (no batch outbox lists it: its insert could have met the key taken)
    events = raw_collections(stack.core).events
    stored = await events.find_one({"_id": event_id})
    assert stored is not None and stored["open"] is True and "outbox" not in stored
    assert await events.count_documents(outboxes_listing([event_id])) == 0
    # when a worker delivers it, then the event is closed and kept
    async with run_worker(stack.settings):
        await wait_for_status(account.gql, planned["id"], "SUCCEEDED", timeout=60)
        async with asyncio.timeout(30):
            while await events.count_documents({"_id": event_id, "open": True}):  # noqa: ASYNC110 - polls the store
                await asyncio.sleep(0.1)
    assert await events.count_documents({"_id": event_id}) == 1


async def test_one_write_stores_a_batch_outbox_per_account_and_at_most_fifty_events_each(
    stack: Stack,
) -> None:
    # given events of two accounts stored by one write: 60 of one account, 3 of another
    repo = stack.core.event_repo
    first, second = ObjectId(), ObjectId()
    batch = [an_event(first) for _ in range(60)] + [an_event(second) for _ in range(3)]
    # when they are stored
    stored = await repo.insert_events([(e, None) for e in batch], RETENTION)
    # then each account's events are listed by their own outboxes, in chunks of at most 50
    events = raw_collections(stack.core).events
    outboxes = await events.find(outboxes_listing([e.id for e in batch])).to_list()
    sizes = sorted((o["account_id"] == first, len(o["events"])) for o in outboxes)
    assert sizes == [(False, 3), (True, 60 - BATCH_OUTBOX_EVENTS), (True, BATCH_OUTBOX_EVENTS)]
    # and each stored event knows its outbox and how many events that one lists
    assert all(e is not None and e.batch is not None for e in stored)
    refs = {e.outbox for e in stored if e is not None}
    assert {r.id for r in refs} == {o["_id"] for o in outboxes}
    # when the outboxes are closed, then they are deleted and the events stay
    await repo.close(list(refs))
    assert await events.count_documents(outboxes_listing([e.id for e in batch])) == 0
    assert await events.count_documents({"_id": {"$in": [e.id for e in batch]}}) == 63


async def test_an_event_stored_alone_is_its_own_outbox(stack: Stack) -> None:
    # given one event of an account in a write (beside another account's two)
    repo = stack.core.event_repo
    lone, pair = an_event(ObjectId()), ObjectId()
    other = [an_event(pair) for _ in range(2)]
    # when they are stored
    stored = await repo.insert_events([(e, None) for e in [lone, *other]], RETENTION)
    # then the lone event is open by itself (two writes: its insert, its close), the pair shares an outbox
    assert [e.batch is None for e in stored if e is not None] == [True, False, False]
    events = raw_collections(stack.core).events
    found = await events.find_one({"_id": lone.id})
    assert found is not None and found["open"] is True
    assert await events.count_documents(outboxes_listing([lone.id])) == 0
    assert await events.count_documents(outboxes_listing([e.id for e in other])) == 1


async def test_a_taken_idempotency_key_leaves_that_event_and_stores_the_rest(stack: Stack) -> None:
    # given a write with two events under the same key, between others
    repo = stack.core.event_repo
    account = ObjectId()
    key = f"key-{uuid.uuid4().hex}"
    a, b, c, d = (an_event(account) for _ in range(4))
    # when they are stored together
    stored = await repo.insert_events([(a, key), (b, None), (c, key), (d, f"other-{key}")], RETENTION)
    # then the second event with the key is left out and every other one is stored, after it too
    assert [e.id if e else None for e in stored] == [a.id, b.id, None, d.id]
    events = raw_collections(stack.core).events
    assert await events.count_documents({"_id": {"$in": [a.id, b.id, c.id, d.id]}}) == 3
    # and no outbox lists the event that was left out
    assert await events.count_documents(outboxes_listing([c.id])) == 0


async def test_a_delivery_is_found_in_a_batch_outbox_written_long_after_its_id(stack: Stack) -> None:
    # given a delivery whose id was minted 30 s before its event's batch was written (a stalled store)
    repo = stack.core.event_repo
    account = ObjectId()
    minted = ObjectId(
        ObjectId.from_datetime(utcnow() - timedelta(seconds=30)).binary[:4] + ObjectId().binary[4:]
    )
    event = an_event(account, delivery_id=minted)
    await repo.insert_events([(event, None)], RETENTION)
    # when it is looked up by id, then it is PENDING in that event
    found = await stack.core.delivery_repo.get(account, minted)
    assert found is not None
    assert (found.status.value, found.event_id) == ("PENDING", event.id)
    # and another account does not find it
    assert await stack.core.delivery_repo.get(ObjectId(), minted) is None


async def test_closing_never_deletes_an_event(stack: Stack) -> None:
    # given an event open by itself (as earlier versions stored every event)
    repo = stack.core.event_repo
    event = an_event(ObjectId())
    await repo.insert_events([(event, "legacy-" + uuid.uuid4().hex)], RETENTION)
    # when it is closed as though it were a batch outbox
    await repo.close([OutboxRef(event.id, 1, batch=True)])
    # then the event is still stored
    assert await raw_collections(stack.core).events.count_documents({"_id": event.id}) == 1


async def test_a_sweep_tick_that_finds_the_previous_one_running_does_nothing(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a sweeper whose store has stopped answering in the middle of a tick
    sweeper = Sweeper(
        stack.settings,
        stack.core.lanes,
        stack.core.event_repo,
        stack.core.delivery_repo,
        stack.core.webhook_repo,
    )
    entered, answer = asyncio.Event(), asyncio.Event()
    reads = 0
    real = stack.core.event_repo.open_between

    async def stalled(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        entered.set()
        await answer.wait()
        return await real(*args, **kwargs)

    monkeypatch.setattr(stack.core.event_repo, "open_between", stalled)
    first = asyncio.create_task(sweeper.sweep())
    await entered.wait()
    # when the next ticks come (arq's cron starts them on time)
    later = [await sweeper.sweep() for _ in range(3)]
    # then they do nothing, and the stalled tick finishes once the store answers
    assert later == [0, 0, 0] and reads == 1
    answer.set()
    await first
