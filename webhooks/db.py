"""MongoDB access: the client, the collections and their indexes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from webhooks.settings import Settings

log = logging.getLogger(__name__)

Doc = dict[str, Any]

# ``$in`` lists go to the store in chunks of this size. SecantusDB checks every candidate against the whole
# list (measured: 2,000 ids cost 5.4 s in one query, 0.38 s in chunks of 50); on MongoDB a chunk costs one
# round trip. Its CPU per document read by ``_id`` (2,000 events, ninth session): 0.27 ms one at a time,
# 0.060 in chunks of 10, 0.055 of 25, 0.075 of 50, 0.115 of 100. An engine load of a backlog whose hand-off
# copies expired reads one event per first attempt, in chunks of this size.
IN_BATCH = 25


async def find_by_ids(
    collection: AsyncCollection[Doc], ids: Sequence[Any], projection: Doc | None = None
) -> AsyncIterator[Doc]:
    """The documents whose ``_id`` is in ``ids`` (any order), read in chunks of ``IN_BATCH``."""
    for chunk in chunked(ids):
        async for doc in collection.find({"_id": {"$in": chunk}}, projection):
            yield doc


T = TypeVar("T")


def chunked(items: Sequence[T], size: int = IN_BATCH) -> list[list[T]]:
    """``items`` without repeats, in lists of at most ``size``."""
    unique = list(dict.fromkeys(items))
    return [unique[i : i + size] for i in range(0, len(unique), size)]


@dataclass(frozen=True, slots=True)
class Collections:
    accounts: AsyncCollection[Doc]
    api_keys: AsyncCollection[Doc]
    webhooks: AsyncCollection[Doc]
    events: AsyncCollection[Doc]
    deliveries: AsyncCollection[Doc]
    locks: AsyncCollection[Doc]
    sequences: AsyncCollection[Doc]  # per (webhook, resource) counters of X-Webhook-Sequence

    @classmethod
    def of(cls, db: AsyncDatabase[Doc]) -> Collections:
        return cls(
            accounts=db["accounts"],
            api_keys=db["api_keys"],
            webhooks=db["webhooks"],
            events=db["events"],
            deliveries=db["deliveries"],
            locks=db["locks"],
            sequences=db["sequences"],
        )


DUPLICATE_KEY = 11000


async def insert_new(collection: AsyncCollection[Doc], docs: list[Doc]) -> list[bool]:
    """``insert_many`` that leaves documents whose unique keys already exist: False for those.

    Any other write error is raised. Used where a write may be replayed (idempotent publishes, re-run jobs).
    """
    if not docs:
        return []
    try:
        await collection.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(e.get("code") != DUPLICATE_KEY for e in errors):
            raise
        taken = {int(e["index"]) for e in errors}
        return [i not in taken for i in range(len(docs))]
    return [True] * len(docs)


def connect(settings: Settings) -> AsyncMongoClient[Doc]:
    """Create the client (lazy: no I/O until the first command). Call from a lifespan, never at import."""
    if not settings.mongodb_url:
        raise RuntimeError(
            "WEBHOOKS_MONGODB_URL is not set: use `webhooks dev` for the embedded default, "
            "or point it at a MongoDB server"
        )
    from webhooks import command_counts  # opt-in, for the benchmark only (WEBHOOKS_BENCH_COUNT_COMMANDS)

    # 10 s to find a server unless the URL says otherwise (a keyword argument would override the URL's)
    url = settings.mongodb_url
    options: dict[str, Any] = {
        "tz_aware": True,
        "connect": False,
        "event_listeners": command_counts.listeners(),
    }
    if "serverselectiontimeoutms=" not in url.lower():
        options["serverSelectionTimeoutMS"] = 10_000
    return AsyncMongoClient(url, **options)


def collections(client: AsyncMongoClient[Doc], settings: Settings) -> Collections:
    return Collections.of(client[settings.mongodb_database])


def raw_collections(core: _HasClient) -> Collections:
    """The collections themselves, for tests and benchmarks that check what was stored (``Core`` does not
    expose them: the service reads and writes only through its repositories)."""
    return collections(core.client, core.settings)


class _HasClient(Protocol):
    @property
    def client(self) -> AsyncMongoClient[Doc]: ...

    @property
    def settings(self) -> Settings: ...


# Every query the service issues is served by one of these (equality fields first, then the sort key).
INDEXES: dict[str, list[IndexModel]] = {
    "api_keys": [
        IndexModel([("key_hash", ASCENDING)], unique=True, name="key_hash_unique"),
        # portal sessions (the only keys with expires_at) are removed a day after they expire
        IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=86400, name="session_ttl"),
    ],
    "webhooks": [
        IndexModel([("account_id", ASCENDING), ("_id", DESCENDING)], name="account_newest"),
        IndexModel([("account_id", ASCENDING), ("events", ASCENDING)], name="account_event_fanout"),
        # the per-account webhook limit (WebhookRepository.insert_within_limit)
        IndexModel(
            [("account_id", ASCENDING), ("quota_slot", ASCENDING)],
            unique=True,
            partialFilterExpression={"quota_slot": {"$type": "int"}},
            name="account_quota_slot",
        ),
    ],
    "events": [
        # partial on a range, not ``$type: "string"``: a query's equality implies a range (MongoDB's
        # planner proves that, and so does SecantusDB's), but never a ``$type``, so a partial index on one
        # served no lookup and each keyed publish read every event stored. Keys are never empty.
        IndexModel(
            [("account_id", ASCENDING), ("idempotency_key", ASCENDING)],
            unique=True,
            partialFilterExpression={"idempotency_key": {"$gt": ""}},
            name="account_idempotency_key_set",
        ),
        IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0, name="retention_ttl"),
        # the outbox: events whose planned deliveries are not all written yet (partial: few entries)
        IndexModel(
            [("account_id", ASCENDING), ("open", ASCENDING), ("_id", DESCENDING)],
            partialFilterExpression={"open": True},
            name="account_open_newest",
        ),
        IndexModel(
            [("open", ASCENDING), ("_id", ASCENDING)],
            partialFilterExpression={"open": True},
            name="open_oldest",
        ),
    ],
    "deliveries": [
        IndexModel(
            [("account_id", ASCENDING), ("webhook_id", ASCENDING), ("_id", DESCENDING)],
            name="account_webhook_newest",
        ),
        IndexModel([("account_id", ASCENDING), ("_id", DESCENDING)], name="account_newest"),
        # the delivery log filtered by a status other than SUCCEEDED (the portal's "failed" view): without it
        # the log reads every delivery of the account (or webhook) to find the few that failed. Partial on a
        # range (FAILED, HELD and PENDING sort before SUCCEEDED), which a status equality provably lies in,
        # so a delivery that succeeds (most of them) costs it no entry. One index for both shapes of the
        # query (with and without webhook_id: then the few matches of each webhook are merged), as every
        # index costs SecantusDB on each insert (a second one cut its batched inserts by another ~12 %).
        IndexModel(
            [("account_id", ASCENDING), ("status", ASCENDING), ("_id", DESCENDING)],
            partialFilterExpression={"status": {"$lt": "SUCCEEDED"}},
            name="account_unsucceeded_newest",
        ),
        # partial: a delivery that succeeds at once (most of them) is written without an entry here
        IndexModel(
            [("status", ASCENDING), ("next_attempt_at", ASCENDING)],
            partialFilterExpression={"status": "PENDING"},
            name="sweeper_due_pending",
        ),
        IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0, name="retention_ttl"),
    ],
}


# Indexes of earlier versions, dropped at start-up (idempotent).
OBSOLETE_INDEXES: dict[str, list[str]] = {
    "deliveries": ["sweeper_due"],
    # one entry per planned delivery of every open event: EventRepository.planning reads by time instead
    # (and the idempotency key index partial on ``$type``, which no lookup could use)
    "events": ["open_planned_delivery", "account_idempotency_key"],
}


INDEX_LOCK = "ensure_indexes"
INDEX_LOCK_TTL = timedelta(minutes=2)  # a process that died holding the lock gives it up after this
INDEX_LOCK_POLL = 0.2


async def ensure_indexes(cols: Collections) -> None:
    """Create every index (idempotent), one process at a time: a rollout starts many API and worker
    processes together, and only the first builds while the others wait, then find everything in place."""
    async with _startup_lock(cols.locks):
        for name, models in INDEXES.items():
            collection = getattr(cols, name)
            await collection.create_indexes(models)
            obsolete = set(OBSOLETE_INDEXES.get(name, ())) & {
                i["name"] async for i in await collection.list_indexes()
            }
            for index in obsolete:
                with contextlib.suppress(OperationFailure):  # dropped already
                    await collection.drop_index(index)


@contextlib.asynccontextmanager
async def _startup_lock(locks: AsyncCollection[Doc]) -> AsyncIterator[None]:
    """A lease in MongoDB (``locks``): held by one process; a dead holder's lease runs out. The owner token
    makes a retried insert (retryable writes) that hits its own first attempt count as acquired."""
    owner = uuid.uuid4().hex
    waited = False
    while True:
        now = datetime.now(UTC)
        try:
            await locks.insert_one({"_id": INDEX_LOCK, "owner": owner, "until": now + INDEX_LOCK_TTL})
            break
        except DuplicateKeyError:
            held = await locks.find_one({"_id": INDEX_LOCK})
            if held is not None and held.get("owner") == owner:
                break
            if held is not None and _as_utc(held["until"]) <= now:  # its holder died: take it over
                await locks.delete_one({"_id": INDEX_LOCK, "owner": held["owner"]})
                continue
            if not waited:
                log.info("another process is creating the indexes; waiting for it")
                waited = True
            await asyncio.sleep(INDEX_LOCK_POLL)
    try:
        yield
    finally:
        await locks.delete_one({"_id": INDEX_LOCK, "owner": owner})


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
