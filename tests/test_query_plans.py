"""Hot queries reach their documents through an index, so their cost does not grow with what is stored.

The store's query planner is asked (``explain``) about the exact filters a repository sent, captured with a
PyMongo ``CommandListener`` on a real SecantusDB. For partial indexes SecantusDB reasons like MongoDB: it
uses one only when the query provably implies the index's filter (MongoDB's ``isSubsetOf`` knows equality,
ranges, ``$exists`` and ``$in``, not ``$type``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId
from pymongo import AsyncMongoClient, monitoring

from webhooks.db import Collections, Doc, ensure_indexes
from webhooks.ids import id_at
from webhooks.models import Delivery, DeliveryStatus, Event
from webhooks.repositories.deliveries import DeliveryRepository, delivery_doc
from webhooks.repositories.events import EventRepository
from webhooks.timeutil import utcnow

STORED = 200


class Commands(monitoring.CommandListener):
    """The commands sent, by name."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.sent.append((event.command_name, dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
async def store(mongodb_url: str) -> AsyncIterator[tuple[Collections, Commands]]:
    commands = Commands()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongodb_url, tz_aware=True, event_listeners=[commands]
    )
    cols = Collections.of(client[f"plans_{uuid.uuid4().hex[:8]}"])
    await ensure_indexes(cols)
    try:
        yield cols, commands
    finally:
        await client.aclose()


def _event(account_id: ObjectId, created_at: Any) -> Event:
    return Event(ObjectId(), account_id, "candidate_hired", b"{}", created_at)


async def _examined(cols: Collections, name: str, command: dict[str, Any]) -> int:
    """Documents the store examines for this command's filter (a find's, with its sort and limit, or an
    update's ``q``)."""
    find: dict[str, Any] = {"find": command[name]}
    if name == "find":
        find |= {k: command[k] for k in ("filter", "sort", "limit", "hint") if k in command}
    else:
        find["filter"] = command["updates"][0]["q"]
    plan = await cols.events.database.command({"explain": find, "verbosity": "executionStats"})
    return int(plan["executionStats"]["totalDocsExamined"])


async def test_idempotency_key_lookups_read_one_event_however_many_are_stored(
    store: tuple[Collections, Commands],
) -> None:
    cols, commands = store
    events = EventRepository(cols)
    account_id = ObjectId()
    now = utcnow()
    window = timedelta(hours=24)
    # given an account with many events stored under idempotency keys, one of them older than the window
    stored = [(_event(account_id, now), f"key-{i}") for i in range(STORED)]
    stored.append((_event(account_id, now - 2 * window), "old-key"))
    assert all(await events.insert_events(stored, timedelta(days=30)))

    # when a publish looks up a key in use, a key never used, and a key used before the window
    commands.sent.clear()
    found = await events.by_idempotency_key(account_id, "key-7", now - window)
    assert await events.by_idempotency_key(account_id, "new-key", now - window) is None
    assert await events.by_idempotency_key(account_id, "old-key", now - window) is None
    sent = [(name, c) for name, c in commands.sent if name in ("find", "update")]

    # then the lookups answer as before: the key in use names its event, the old key may be used again
    assert found is not None and found.id == stored[7][0].id
    assert await events.insert_events([(_event(account_id, now), "old-key")], timedelta(days=30)) != [None]
    assert await events.by_idempotency_key(account_id, "key-7", now - window) is not None
    # and every read and write of them examined at most the one event holding the key, not all stored
    assert sent
    examined = {await _examined(cols, name, c): (name, c) for name, c in sent}
    assert max(examined) <= 1, examined[max(examined)]


async def test_start_up_replaces_the_earlier_idempotency_key_index(mongodb_url: str) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url, tz_aware=True)
    cols = Collections.of(client[f"plans_{uuid.uuid4().hex[:8]}"])
    try:
        # given a store indexed by an earlier version (the key index partial on ``$type``), keys in use
        await cols.events.create_index(
            [("account_id", 1), ("idempotency_key", 1)],
            unique=True,
            partialFilterExpression={"idempotency_key": {"$type": "string"}},
            name="account_idempotency_key",
        )
        account_id = ObjectId()
        events = EventRepository(cols)
        assert all(await events.insert_events([(_event(account_id, utcnow()), "k")], timedelta(days=1)))
        # when this version starts
        await ensure_indexes(cols)
        # then only the declared key index is left, and it still refuses a key in use
        names = {ix["name"] async for ix in await cols.events.list_indexes()}
        assert "account_idempotency_key" not in names and "account_idempotency_key_set" in names
        assert await events.insert_events([(_event(account_id, utcnow()), "k")], timedelta(days=1)) == [None]
    finally:
        await client.drop_database(cols.events.database.name)
        await client.aclose()


def _delivery_doc(account_id: ObjectId, webhook_id: ObjectId, status: DeliveryStatus, at: datetime) -> Doc:
    delivery = Delivery(
        id=ObjectId(id_at(at).binary[:4] + ObjectId().binary[4:]),
        account_id=account_id,
        webhook_id=webhook_id,
        event_id=ObjectId(),
        event="candidate_hired",
        status=status,
        test=False,
        attempt_count=1,
        next_attempt_at=None,
        created_at=at,
        updated_at=at,
    )
    return delivery_doc(delivery, expires_at=at + timedelta(days=30))


async def test_the_delivery_log_filtered_by_an_unsuccessful_status_reads_only_those_deliveries(
    store: tuple[Collections, Commands],
) -> None:
    cols, commands = store
    deliveries = DeliveryRepository(cols, EventRepository(cols))
    account_id, webhook_id = ObjectId(), ObjectId()
    now = utcnow()
    # given an account whose deliveries mostly succeeded, a few failed and one is held, over the past day
    statuses = [DeliveryStatus.SUCCEEDED] * STORED + [DeliveryStatus.FAILED] * 3 + [DeliveryStatus.HELD]
    docs = [
        _delivery_doc(account_id, webhook_id, status, now - timedelta(minutes=5 * i))
        for i, status in enumerate(statuses[::-1])
    ]
    await cols.deliveries.insert_many(docs)
    # when its delivery log is filtered by each status that is not SUCCEEDED, for the account and the webhook
    commands.sent.clear()
    found = {}
    for status in (DeliveryStatus.FAILED, DeliveryStatus.HELD, DeliveryStatus.PENDING):
        for webhook in (None, webhook_id):
            page = await deliveries.page(
                account_id,
                webhook_id=webhook,
                status=status,
                event=None,
                first=20,
                after=None,
                oldest=now - timedelta(days=30),
            )
            found[status, webhook] = len(page.items)
    sent = [(name, c) for name, c in commands.sent if name == "find" and c["find"] == cols.deliveries.name]
    # then each finds its deliveries
    assert found == {(s, w): {"FAILED": 3, "HELD": 1, "PENDING": 0}[s.value] for s, w in found}
    # and each read examined those only, not every delivery of the account
    examined = [(await _examined(cols, name, c), c["filter"]) for name, c in sent]
    assert max(n for n, _ in examined) <= 3, max(examined, key=lambda e: e[0])
