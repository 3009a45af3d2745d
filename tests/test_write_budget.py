"""The write budget (issue 11): a delivery that succeeds on its first attempt costs about one document
written. Counted with a PyMongo ``CommandListener`` on every client of this process (the in-process API and
worker), so this tests the design of the write path, not the clock."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from bson import ObjectId
from pymongo import monitoring

from tests.conftest import make_settings
from tests.delivery_support import create_webhook, publish
from tests.receiver import Receiver
from tests.support import Stack, run_stack
from webhooks.db import raw_collections
from webhooks.pubsub import ATTEMPTS_CHANNEL, decode

WRITES = {"insert", "update", "delete", "findAndModify"}
FAN_OUT = 10
EVENTS = 20


@dataclass
class WriteCounter(monitoring.CommandListener):
    """Documents written (inserted, modified, deleted) per collection, while ``on``."""

    on: bool = False
    docs: Counter[str] = field(default_factory=Counter)
    commands: Counter[str] = field(default_factory=Counter)
    event_loads: int = 0
    _inserts: dict[int, tuple[str, int]] = field(default_factory=dict)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.on and event.command_name == "find" and event.command.get("find") == "events":
            by_id = event.command.get("filter", {}).get("_id")
            if isinstance(by_id, dict) and "$in" in by_id:  # the engine loading events by id
                self.event_loads += 1
        if self.on and event.command_name in WRITES:
            collection = str(event.command.get(event.command_name))
            self.commands[f"{event.command_name} {collection}"] += 1
            if event.command_name == "insert":
                self._inserts[event.request_id] = (collection, len(event.command.get("documents", ())))
            else:
                self._inserts[event.request_id] = (collection, -1)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        found = self._inserts.pop(event.request_id, None)
        if found is None:
            return
        collection, inserted = found
        reply = event.reply
        if inserted >= 0:
            written = inserted - len(reply.get("writeErrors", ()))
        elif event.command_name == "update":
            written = int(reply.get("nModified", 0)) + len(reply.get("upserted", ()))
        elif event.command_name == "findAndModify":
            written = int(reply.get("lastErrorObject", {}).get("n", 0))
        else:
            written = int(reply.get("n", 0))
        self.docs[collection] += written

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._inserts.pop(event.request_id, None)


COUNTER = WriteCounter()
monitoring.register(COUNTER)  # every client made from now on reports here (the stack's below)


@pytest.fixture(scope="module")
async def stack(mongodb_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    settings = make_settings(mongodb_url, tmp_path_factory.mktemp("budget"), sweep_interval=1, sweep_grace=0)
    async with run_stack(settings) as running:
        yield running


async def test_a_delivery_that_succeeds_at_once_costs_about_one_document_written(
    stack: Stack, receiver: Receiver
) -> None:
    # given an account with 10 webhooks on a healthy receiver, warmed up by one event
    account = await stack.account()
    paths = [f"/budget/{uuid.uuid4().hex[:6]}" for _ in range(FAN_OUT)]
    for p in paths:
        await create_webhook(account.gql, receiver.url(p))
    await publish(account.gql)
    for p in paths:
        await receiver.wait_for(p, 1)
    await outbox_empty(stack, account.id)
    # when 20 events are published (200 deliveries) and all of them have succeeded and been recorded
    COUNTER.docs.clear()
    COUNTER.commands.clear()
    COUNTER.event_loads = 0
    COUNTER.on = True
    try:
        async with live_attempts(stack, account.id) as announced:
            await asyncio.gather(*(publish(account.gql) for _ in range(EVENTS)))
            for p in paths:
                await receiver.wait_for(p, 1 + EVENTS, timeout=60)
            await outbox_empty(stack, account.id)
            await all_written(stack, account.id, 1 + EVENTS)
            # the live feed announces an attempt after the worker's work that follows its record (failure
            # counts and their resets): once every attempt is announced, nothing of theirs is left to write
            async with asyncio.timeout(60):
                while len(announced) < FAN_OUT * EVENTS:  # noqa: ASYNC110 - filled by the feed's reader
                    await asyncio.sleep(0.05)
    finally:
        COUNTER.on = False
    # then the store wrote at most 1.2 documents per delivery: its record (with the attempt in it), and its
    # share of the event and of the batch outbox that lists it (written once, deleted once)
    deliveries = FAN_OUT * EVENTS
    per_delivery = sum(COUNTER.docs.values()) / deliveries
    print(f"documents written per delivery: {per_delivery:.3f} {dict(COUNTER.docs)} {dict(COUNTER.commands)}")
    assert per_delivery <= 1.2, (per_delivery, COUNTER.docs, COUNTER.commands)
    assert COUNTER.docs["deliveries"] == deliveries, COUNTER.docs
    # and a success of a webhook with no failures to reset costs its webhook no write at all
    assert COUNTER.commands["update webhooks"] == 0, COUNTER.commands
    # and no first attempt read its event from MongoDB: the API handed each one to the worker in Redis
    assert COUNTER.event_loads == 0


@contextlib.asynccontextmanager
async def live_attempts(stack: Stack, account_id: str) -> AsyncIterator[set[str]]:
    """The ids of the account's attempts announced on the live feed while in this block."""
    announced: set[str] = set()
    pubsub = stack.core.redis.pubsub()
    await pubsub.subscribe(ATTEMPTS_CHANNEL)

    async def collect() -> None:
        async for message in pubsub.listen():
            attempt = decode(message["data"]) if message["type"] == "message" else {}
            if attempt.get("accountId") == account_id:
                announced.add(attempt["id"])

    collector = asyncio.create_task(collect())
    try:
        yield announced
    finally:
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collector
        await pubsub.aclose()


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(60):
        while not await check():  # noqa: ASYNC110 - polls the store
            await asyncio.sleep(0.1)


async def outbox_empty(stack: Stack, account_id: str) -> None:
    """Wait until the sweeper has closed every event of the account (all of their deliveries written)."""
    query = {"account_id": ObjectId(account_id), "open": True}
    await until(lambda: _none(raw_collections(stack.core).events.count_documents(query)))


async def all_written(stack: Stack, account_id: str, events: int) -> None:
    query = {"account_id": ObjectId(account_id), "status": "SUCCEEDED"}

    async def done() -> bool:
        count: int = await raw_collections(stack.core).deliveries.count_documents(query)
        return count >= FAN_OUT * events

    await until(done)


async def _none(count: Awaitable[int]) -> bool:
    found: int = await count
    return found == 0
