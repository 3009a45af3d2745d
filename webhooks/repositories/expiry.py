"""Expired documents deleted by the service, in small batches, where the store's own TTL monitor is off.

Every TTL index in ``webhooks.db.INDEXES`` (events and deliveries past their retention, portal sessions a day
after they end) is honoured the way MongoDB's TTL monitor honours it: a document goes once its indexed date
is more than ``expireAfterSeconds`` in the past. MongoDB needs no help. The embedded SecantusDB runs with its
monitor off, because that one reads every document of every such collection under the store's one lock
(``webhooks_cli.embedded.serve_secantus``); with ``WEBHOOKS_RETENTION_SWEEP`` the worker's sweeper calls
``expire`` instead. Each round reads the ids of at most ``EXPIRE_BATCH`` expired documents through the TTL
index (a range that matches only expired ones, so its cost is what it deletes), then deletes those; a tick
stops at its budget, so a large expiry (a retention just shortened) is spread over ticks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from pymongo.asynchronous.collection import AsyncCollection

from webhooks.db import INDEXES, Collections, Doc

# per delete (SecantusDB: 1,000 expired deliveries went in 0.5–0.7 s of deletes of 100, 0.8–1.8 s of 25)
EXPIRE_BATCH = 100


@dataclass(frozen=True, slots=True)
class TTLRule:
    collection: str
    field: str
    after: timedelta


def ttl_rules() -> list[TTLRule]:
    """The TTL indexes of ``INDEXES`` (single-field, on a date, as MongoDB requires)."""
    rules = []
    for collection, models in INDEXES.items():
        for model in models:
            spec = model.document
            after = spec.get("expireAfterSeconds")
            if after is None:
                continue
            (field,) = spec["key"].keys()
            rules.append(TTLRule(collection, field, timedelta(seconds=after)))
    return rules


class ExpiryRepository:
    def __init__(self, cols: Collections) -> None:
        self._cols = cols
        self._rules = ttl_rules()

    async def expire(self, now: datetime, budget: int) -> int:
        """Delete documents expired at ``now``, at most ``budget`` of them; how many went."""
        deleted = spent = 0
        for rule in self._rules:
            collection: AsyncCollection[Doc] = getattr(self._cols, rule.collection)
            expired = {rule.field: {"$lt": now - rule.after}}
            while spent < budget:
                limit = min(EXPIRE_BATCH, budget - spent)
                ids = [d["_id"] async for d in collection.find(expired, {"_id": 1}).limit(limit)]
                spent += len(ids)
                if ids:  # (with the date again: a document whose date moved meanwhile stays)
                    result = await collection.delete_many({"_id": {"$in": ids}, **expired})
                    deleted += result.deleted_count
                if len(ids) < limit:
                    break
        return deleted
