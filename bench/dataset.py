"""P6's dataset: N deliveries over 100 webhooks and the 30-day retention window, built once and cached.

The SecantusDB data directory lives in ``bench/.cache/p6-<N>/`` with ``meta.json`` (API keys, ids, the
Fernet key, the cursors to query). A second account holds the 1,000-delivery baseline (one webhook, same
time spread). Documents are made by ``webhooks.repositories.deliveries.delivery_doc`` (the service's own
shape, via ``bench.docs``), as SUCCEEDED deliveries with their first attempt embedded, into the collection
with the service's indexes (``ensure_indexes``).
ObjectIds carry their creation time (4-byte timestamp) and a unique 8-byte counter.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from bson import ObjectId
from cryptography.fernet import Fernet
from pymongo import AsyncMongoClient

from bench.docs import succeeded_doc
from bench.procs import CACHE_DIR, GraphQL, ReceiverControl, create_webhooks, stack
from webhooks.db import Collections, ensure_indexes
from webhooks.pagination import encode_cursor

RETENTION = timedelta(days=30)
SHAPE = 2  # the document shape: 2 = one document per delivery, attempts embedded (older caches are rebuilt)
MAX_AGE = timedelta(days=2)  # older caches are rebuilt: their deliveries would fall out of the window
WEBHOOKS = 100
SMALL = 1_000
BATCH = 1_000


def cache_dir(n: int) -> Path:
    return CACHE_DIR / f"p6-{n}"


def load_meta(n: int) -> dict[str, Any] | None:
    path = cache_dir(n) / "meta.json"
    if not path.exists():
        return None
    meta: dict[str, Any] = json.loads(path.read_text())
    stale = time.time() - meta["built_at"] > MAX_AGE.total_seconds()
    if not meta.get("complete") or meta.get("shape") != SHAPE or stale:
        return None
    return meta


def _oid(at: datetime, counter: int) -> ObjectId:
    return ObjectId(int(at.timestamp()).to_bytes(4, "big") + counter.to_bytes(8, "big"))


async def _insert(
    cols: Collections,
    account: ObjectId,
    webhooks: list[ObjectId],
    n: int,
    counter_base: int,
    watch: ObjectId,
    now: datetime,
    log: Any,
) -> list[ObjectId]:
    """Insert ``n`` deliveries spread over the window; return ``watch``'s delivery ids, oldest first."""
    rng = random.Random(counter_base)
    start = now - RETENTION + timedelta(hours=1)
    span = (now - timedelta(minutes=1) - start).total_seconds()
    watched: list[ObjectId] = []
    pending: set[asyncio.Task[Any]] = set()
    batch: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for i in range(n):
        at = start + timedelta(seconds=(i + rng.random()) * span / n)
        webhook = webhooks[rng.randrange(len(webhooks))]
        oid = _oid(at, counter_base + i)
        if webhook == watch:
            watched.append(oid)
        batch.append(succeeded_doc(account, webhook, at, RETENTION, delivery_id=oid))
        if len(batch) == BATCH:
            if len(pending) >= 2:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            pending.add(asyncio.create_task(cols.deliveries.insert_many(batch, ordered=False)))
            batch = []
            if (i + 1) % 100_000 == 0:
                rate = (i + 1) / (time.perf_counter() - t0)
                log(f"  P6 dataset: {i + 1:,} of {n:,} deliveries inserted ({rate:,.0f}/s)")
    if batch:
        pending.add(asyncio.create_task(cols.deliveries.insert_many(batch, ordered=False)))
    for task in pending:
        await task
    return watched


async def _build(n: int, log: Any) -> dict[str, Any]:
    directory = cache_dir(n)
    shutil.rmtree(directory, ignore_errors=True)
    secret_key = Fernet.generate_key().decode()
    with stack(directory / "data", worker=False, secret_key=secret_key) as running:
        key_large = running.create_account("P6 large")
        key_small = running.create_account("P6 small")
        async with aiohttp.ClientSession() as session:
            recv = ReceiverControl(session, running.receiver_url)
            large = await create_webhooks(
                GraphQL(session, running.api_url, key_large), recv, [f"/ok/p6-{i}" for i in range(WEBHOOKS)]
            )
            small = await create_webhooks(
                GraphQL(session, running.api_url, key_small), recv, ["/ok/p6-small"]
            )
        url = running.stores.mongodb_url
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, tz_aware=True)
        try:
            cols = Collections.of(client["webhooks"])
            await ensure_indexes(cols)
            hook_large = await cols.webhooks.find_one({"_id": ObjectId(large[0])})
            assert hook_large is not None
            account_large = hook_large["account_id"]
            hook_small = await cols.webhooks.find_one({"_id": ObjectId(small[0])})
            assert hook_small is not None
            now = datetime.now(tz=UTC)
            t0 = time.perf_counter()
            watched_large = await _insert(
                cols, account_large, [ObjectId(w) for w in large], n, 0, ObjectId(large[0]), now, log
            )
            watched_small = await _insert(
                cols,
                hook_small["account_id"],
                [ObjectId(small[0])],
                SMALL,
                10**12,
                ObjectId(small[0]),
                now,
                log,
            )
            seconds = time.perf_counter() - t0
        finally:
            await client.close()
    meta = {
        "n": n,
        "built_at": time.time(),
        "build_seconds": seconds,
        "secret_key": secret_key,
        "large": {
            "key": key_large,
            "webhook": large[0],
            "count": len(watched_large),
            "middle": encode_cursor(watched_large[len(watched_large) // 2]),
        },
        "small": {
            "key": key_small,
            "webhook": small[0],
            "count": len(watched_small),
            "middle": encode_cursor(watched_small[len(watched_small) // 2]),
        },
        "shape": SHAPE,
        "complete": True,
    }
    (directory / "meta.json").write_text(json.dumps(meta))
    log(f"  P6 dataset: built {n:,} + {SMALL:,} deliveries in {seconds:.0f} s (cached in {directory})")
    return meta


async def ensure(n: int, log: Any = print) -> dict[str, Any]:
    return load_meta(n) or await _build(n, log)


if __name__ == "__main__":
    import sys

    asyncio.run(ensure(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000))
