"""Retention on the embedded store: its TTL monitor is off, and the worker's sweeper deletes what expired.

SecantusDB's own TTL monitor reads every document of every TTL-indexed collection once a minute under the
store's one lock (a 1.6 s freeze of every command with 100,000 deliveries stored), so ``webhooks dev``, the
tests and the benchmarks run it without (``webhooks_cli.embedded.serve_secantus``) and turn on
``WEBHOOKS_RETENTION_SWEEP``. Real parts: SecantusDB as ``webhooks dev`` starts it, the worker, Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from bson import ObjectId

from tests.conftest import make_settings
from tests.support import Stack, run_stack
from webhooks.core import Core
from webhooks.db import Collections, Doc, raw_collections
from webhooks.models import Attempt, AttemptTrigger, Delivery, DeliveryStatus, Event, Planned
from webhooks.repositories.deliveries import MAX_KEPT_ATTEMPTS, Recorded
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


def _attempt(delivery: Delivery, number: int, now: datetime) -> Attempt:
    """A failed attempt as a receiver answered it: 4 KiB of body, 8 KiB of headers (the most kept of each)."""
    return Attempt(
        id=ObjectId(),
        delivery_id=delivery.id,
        account_id=delivery.account_id,
        webhook_id=delivery.webhook_id,
        event=delivery.event,
        number=number,
        trigger=AttemptTrigger.MANUAL,
        started_at=now,
        duration_ms=5,
        status_code=500,
        response_headers={f"x-h{i}": "v" * 500 for i in range(16)},
        response_body="e" * 4096,
        error_class=None,
        error=None,
        delivery_status=DeliveryStatus.FAILED,
        next_attempt_at=None,
    )


async def test_a_delivery_retried_again_and_again_keeps_a_bounded_attempt_log(core: Core) -> None:
    """Manual retries are not limited, and each appends to the one delivery document: unbounded, it would
    reach MongoDB's 16 MiB document limit (~1,300 such attempts), and that refused append would fail its
    whole record batch, other accounts' attempts with it, again at every sweep."""
    now = utcnow()
    event = Event(
        ObjectId(), ObjectId(), "candidate_hired", b"{}", now, (Planned(ObjectId(), ObjectId(), held=False),)
    )
    delivery = event.pending_delivery(event.planned[0])
    retention = timedelta(days=1)
    # given a delivery written by its first attempt
    first = _attempt(delivery, 1, now)
    took = await core.delivery_repo.record_outcomes(
        [Recorded(delivery, first, DeliveryStatus.PENDING, now, now, first=True)], retention
    )
    assert took == [True]
    # when it is retried far more often than the attempt log keeps
    total = MAX_KEPT_ATTEMPTS + 5
    for number in range(2, total + 1):
        state = replace(delivery, attempt_count=number - 1)
        attempt = _attempt(delivery, number, now)
        recorded = Recorded(state, attempt, DeliveryStatus.PENDING, now, now, first=False)
        assert await core.delivery_repo.record_outcomes([recorded], retention) == [True]
    # then it counts every attempt, and its document holds the newest ones only, up to the bound
    stored = await core.delivery_repo.stored_by_ids([delivery.id])
    assert stored[delivery.id].attempt_count == total
    kept = (await core.delivery_repo.attempts_of([delivery.id]))[delivery.id]
    assert [a.number for a in kept] == list(range(total - MAX_KEPT_ATTEMPTS + 1, total + 1))
