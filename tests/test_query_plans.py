"""Hot queries reach their documents through an index, so their cost does not grow with what is stored.

The store's query planner is asked (``explain``) about the exact filters a repository sent, captured with a
PyMongo ``CommandListener`` on a real SecantusDB. For partial indexes SecantusDB reasons like MongoDB: it
uses one only when the query provably implies the index's filter (MongoDB's ``isSubsetOf`` knows equality,
ranges, ``$exists`` and ``$in``, not ``$type``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from bson import ObjectId
from pymongo import AsyncMongoClient, monitoring

from webhooks.db import Collections, ensure_indexes
from webhooks.models import Event
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
    """Documents the store examines for this command's filter (a find's, or an update's ``q``)."""
    query = command["filter"] if name == "find" else command["updates"][0]["q"]
    collection = cols.events.name
    plan = await cols.events.database.command(
        {"explain": {"find": collection, "filter": query}, "verbosity": "executionStats"}
    )
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
    await events.release_idempotency_key(account_id, "key-7", now - window)
    assert await events.by_idempotency_key(account_id, "new-key", now - window) is None
    await events.release_idempotency_key(account_id, "new-key", now - window)
    assert await events.by_idempotency_key(account_id, "old-key", now - window) is None
    await events.release_idempotency_key(account_id, "old-key", now - window)
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
