"""Real processes: a worker killed mid-attempt and a wiped Redis lose no delivery.

The worker runs as `python -m webhooks_cli worker` in its own process; the API runs in-process.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from tests.conftest import make_settings, session_redis_url
from tests.delivery_support import (
    create_webhook,
    delivery,
    publish,
    until_closed,
    wait_for_attempt_count,
    wait_for_status,
)
from tests.receiver import Receiver, sleep
from tests.support import Stack, run_stack, service_env
from webhooks.settings import Settings

SCHEDULE = (0.0, 1.0, 1.0, 1.0)
DELIVERY_TIMEOUT = 3  # keeps arq's own in-progress mark short too (job_timeout + 10 s)


@pytest.fixture(scope="module")
async def stack(mongodb_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    settings = make_settings(
        mongodb_url,
        tmp_path_factory.mktemp("processes"),
        retry_schedule=SCHEDULE,
        delivery_timeout=DELIVERY_TIMEOUT,
        sweep_interval=1,
        sweep_grace=1,
    )
    async with run_stack(settings, worker=False) as running:
        yield running


def worker_env(settings: Settings) -> dict[str, str]:
    return service_env(
        settings,
        WEBHOOKS_RETRY_SCHEDULE=",".join(str(d) for d in settings.retry_schedule),
        WEBHOOKS_DELIVERY_TIMEOUT=str(settings.delivery_timeout),
        WEBHOOKS_SWEEP_INTERVAL="1",
        WEBHOOKS_SWEEP_GRACE="1",
    )


@contextmanager
def workers(settings: Settings, log_dir: Path) -> Iterator[Any]:
    """Start worker processes on demand; every one is SIGKILLed and reaped on the way out."""
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        log = open(log_dir / f"worker-{len(started)}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "webhooks_cli", "worker"],
            env=worker_env(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(10)


async def wipe_redis() -> None:
    """What a Redis restart without persistence, or a FLUSHALL, leaves: nothing."""
    redis = aioredis.Redis.from_url(session_redis_url())
    try:
        await redis.flushdb()
    finally:
        await redis.aclose()


async def arrived(receiver: Receiver, predicate: Callable[[], bool], timeout: float = 30) -> None:
    async with asyncio.timeout(timeout), receiver.arrived:
        await receiver.arrived.wait_for(predicate)


def distinct_deliveries(receiver: Receiver, *paths: str) -> Counter[str]:
    return Counter(r.headers["X-Webhook-Delivery"] for p in paths for r in receiver.received[p])


async def test_a_worker_killed_mid_attempt_loses_nothing(
    stack: Stack, receiver: Receiver, tmp_path: Path
) -> None:
    # given two webhooks on a receiver that holds every request 2 s before answering 200
    account = await stack.account()
    a, b = f"/held/{uuid.uuid4().hex[:6]}", f"/held/{uuid.uuid4().hex[:6]}"
    await create_webhook(account.gql, receiver.url(a, sleep(2)))
    await create_webhook(account.gql, receiver.url(b, sleep(2)))
    with workers(stack.settings, tmp_path) as start:
        first = start()
        # when 20 events (40 deliveries) are published and the worker is SIGKILLed with attempts in flight
        published = await asyncio.gather(*(publish(account.gql) for _ in range(20)))
        ids = [d["id"] for p in published for d in p["event"]["deliveries"]]
        assert len(ids) == 40
        await arrived(receiver, lambda: len(receiver.received[a]) + len(receiver.received[b]) >= 10)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        in_flight = distinct_deliveries(receiver, a, b)
        assert len(in_flight) > 0 and all(d in ids for d in in_flight)
        # and a new worker is started
        start()
        # then every delivery succeeds, and every one reached the receiver at least once
        done = await asyncio.gather(*(wait_for_status(account.gql, i, "SUCCEEDED", timeout=30) for i in ids))
    assert all(d["status"] == "SUCCEEDED" for d in done)
    assert set(distinct_deliveries(receiver, a, b)) == set(ids)
    # (the killed attempts left no record; the attempt that succeeded is the one in the log)
    assert all(d["attempts"][-1]["statusCode"] == 200 for d in done)


def fails_first(times: int) -> Any:
    """Fail the first ``times`` attempts of each delivery (counted by X-Webhook-Delivery), then answer 200."""
    seen: Counter[str] = Counter()

    async def answer(request: web.Request, n: int) -> web.StreamResponse:
        delivery_id = request.headers["X-Webhook-Delivery"]
        seen[delivery_id] += 1
        return web.Response(status=500 if seen[delivery_id] <= times else 200)

    return answer


async def test_a_redis_wipe_with_retries_pending_loses_nothing(
    stack: Stack, receiver: Receiver, tmp_path: Path
) -> None:
    # given a receiver that fails the first 2 attempts of every delivery, and a worker
    account = await stack.account()
    p = f"/flaky/{uuid.uuid4().hex[:6]}"
    await create_webhook(account.gql, receiver.url(p, fails_first(2)))
    redis = aioredis.Redis.from_url(session_redis_url())
    try:
        with workers(stack.settings, tmp_path) as start:
            start()
            # when events are published and, once every first attempt failed and its retry is queued,
            # the Redis database is wiped
            published = await asyncio.gather(*(publish(account.gql) for _ in range(10)))
            ids = [pub["event"]["deliveries"][0]["id"] for pub in published]
            await arrived(receiver, lambda: len(distinct_deliveries(receiver, p)) == len(ids))
            recorded = [await wait_for_attempt_count(account.gql, i, 1) for i in ids]
            assert all(d["status"] == "PENDING" for d in recorded)  # retries due about 1 s later
            await redis.flushdb()
            # then the sweeper queues them again from MongoDB and every delivery succeeds on its third attempt
            done = await asyncio.gather(
                *(wait_for_status(account.gql, i, "SUCCEEDED", timeout=30) for i in ids)
            )
    finally:
        await redis.aclose()
    for one in done:
        assert [(a["number"], a["statusCode"]) for a in one["attempts"]] == [(1, 500), (2, 500), (3, 200)]
    assert distinct_deliveries(receiver, p) == Counter({i: 3 for i in ids})


async def test_a_redis_wipe_before_any_attempt_loses_nothing_and_empties_the_outbox(
    stack: Stack, receiver: Receiver, tmp_path: Path
) -> None:
    from bson import ObjectId

    from webhooks.db import IN_BATCH, raw_collections

    # given 3 webhooks and 30 events published while no worker runs: 90 planned deliveries, more than one
    # batch of the sweeper's store reads
    account = await stack.account()
    paths = [f"/wiped/{uuid.uuid4().hex[:6]}" for _ in range(3)]
    for path in paths:
        await create_webhook(account.gql, receiver.url(path))
    published = await asyncio.gather(*(publish(account.gql) for _ in range(30)))
    ids = [d["id"] for p in published for d in p["event"]["deliveries"]]
    assert len(ids) == 90 > IN_BATCH
    # (not written yet, each one is PENDING in its event's outbox, and found there by id; never by another
    # account)
    pending = await asyncio.gather(*(delivery(account.gql, i) for i in ids))
    assert {(d["status"], len(d["attempts"])) for d in pending} == {("PENDING", 0)}
    other = await stack.account()
    assert await delivery(other.gql, ids[0]) is None
    # when Redis is wiped before any attempt and a worker starts
    await wipe_redis()
    with workers(stack.settings, tmp_path) as start:
        start()
        # then the sweeper puts every delivery back from MongoDB: each one succeeds, delivered once
        done = await asyncio.gather(*(wait_for_status(account.gql, i, "SUCCEEDED", timeout=60) for i in ids))
        assert distinct_deliveries(receiver, *paths) == Counter({i: 1 for i in ids})
        # and every event leaves the outbox
        events = raw_collections(stack.core).events
        event_ids = [ObjectId(p["event"]["id"]) for p in published]
        await until_closed(events, event_ids)
    assert all(len(d["attempts"]) == 1 for d in done)


async def test_a_redis_wipe_after_a_busy_second_requeues_every_event_of_it(
    stack: Stack, receiver: Receiver, tmp_path: Path
) -> None:
    # given a webhook whose endpoint hangs (its breaker soon lets one attempt through at a time, so its
    # events stay in the outbox for minutes) and a healthy one, of two accounts
    stuck, healthy = await stack.account(), await stack.account()
    hang, ok = f"/hang/{uuid.uuid4().hex[:6]}", f"/ok/{uuid.uuid4().hex[:6]}"
    await create_webhook(stuck.gql, receiver.url(hang, sleep(60)))
    await create_webhook(healthy.gql, receiver.url(ok))
    # and, within about one second, 100 events for the first and then 10 for the second, each stored as its
    # own outbox (an idempotency key): more than the sweeper reads at once (ids hold whole seconds)
    await asyncio.sleep(1 - time.time() % 1 + 0.01)
    keys = [uuid.uuid4().hex for _ in range(110)]
    await asyncio.gather(*(publish(stuck.gql, idempotencyKey=k) for k in keys[:100]))
    published = await asyncio.gather(*(publish(healthy.gql, idempotencyKey=k) for k in keys[100:]))
    ids = [p["event"]["deliveries"][0]["id"] for p in published]
    # when Redis is wiped before any attempt and a worker starts
    await wipe_redis()
    with workers(stack.settings, tmp_path) as start:
        start()
        # then the sweeper puts back all of them, not only the first documents of that second (the stuck
        # webhook's, which stay open): the healthy account's deliveries succeed
        await asyncio.gather(*(wait_for_status(healthy.gql, i, "SUCCEEDED", timeout=30) for i in ids))
    assert distinct_deliveries(receiver, ok) == Counter({i: 1 for i in ids})
