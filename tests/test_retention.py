"""Retention on the embedded store: its TTL monitor is off, and the worker's sweeper deletes what expired.

SecantusDB's own TTL monitor reads every document of every TTL-indexed collection once a minute under the
store's one lock (a 1.6 s freeze of every command with 100,000 deliveries stored), so ``webhooks dev``, the
tests and the benchmarks run it without (``webhooks_cli.embedded.serve_secantus``) and turn on
``WEBHOOKS_RETENTION_SWEEP``. Real parts: SecantusDB as ``webhooks dev`` starts it, the worker, Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from bson import ObjectId

from tests.conftest import make_settings
from tests.support import Stack, run_stack
from webhooks.core import Core
from webhooks.db import Collections, Doc, raw_collections
from webhooks.repositories.expiry import ExpiryRepository
from webhooks.timeutil import utcnow


def expiring(at_days: float, **fields: object) -> Doc:
    """A document whose ``expires_at`` is ``at_days`` from now (negative: in the past)."""
    return {
        "_id": ObjectId(),
        "account_id": ObjectId(),
        "expires_at": utcnow() + timedelta(days=at_days),
        **fields,
    }


async def ids(collection_docs: list[Doc], cols: Collections, name: str) -> set[ObjectId]:
    wanted = [d["_id"] for d in collection_docs]
    return {d["_id"] async for d in getattr(cols, name).find({"_id": {"$in": wanted}}, {"_id": 1})}


@pytest.fixture
async def stack(mongodb_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    async with run_stack(make_settings(mongodb_url, tmp_path, sweep_interval=1.0)) as running:
        yield running


async def test_the_worker_deletes_expired_events_deliveries_and_portal_sessions(stack: Stack) -> None:
    cols = raw_collections(stack.core)
    # given, in each TTL-indexed collection, documents past their expiry and documents within it
    expired = {
        "deliveries": [expiring(-1), expiring(-0.01)],
        "events": [expiring(-2)],
        "api_keys": [expiring(-1.5, key_hash=ObjectId().binary.hex())],  # a session ended over a day ago
    }
    kept = {
        "deliveries": [expiring(29)],
        "events": [expiring(1)],
        "api_keys": [expiring(-0.5, key_hash=ObjectId().binary.hex())],  # ended, not yet a day ago
    }
    for name in expired:
        await getattr(cols, name).insert_many(expired[name] + kept[name])
    # when the worker's sweeper ticks (every second here), then the expired ones go
    async with asyncio.timeout(20):
        while any([await ids(expired[name], cols, name) for name in expired]):  # noqa: ASYNC110 - polls the store
            await asyncio.sleep(0.1)
    # and the others stay
    for name in kept:
        assert await ids(kept[name], cols, name) == {d["_id"] for d in kept[name]}


async def test_a_tick_deletes_at_most_its_budget_and_the_next_goes_on(core: Core) -> None:
    cols = raw_collections(core)
    # given 250 expired deliveries
    docs = [expiring(-3) for _ in range(250)]
    await cols.deliveries.insert_many(docs)
    repo = ExpiryRepository(cols)
    # when one tick with a budget of 120 runs, then 120 go
    assert await repo.expire(utcnow(), 120) == 120
    assert len(await ids(docs, cols, "deliveries")) == 130
    # and the next ticks delete the rest
    assert await repo.expire(utcnow(), 120) == 120
    assert await repo.expire(utcnow(), 120) == 10
    assert await ids(docs, cols, "deliveries") == set()
