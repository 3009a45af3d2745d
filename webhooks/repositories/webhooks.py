from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from bson import ObjectId
from pymongo import DESCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from webhooks.db import Collections, Doc, find_by_ids
from webhooks.models import PreviousSecret, Webhook
from webhooks.pagination import Page
from webhooks.timeutil import utcnow


class WebhookRepository:
    def __init__(self, cols: Collections) -> None:
        self._col = cols.webhooks

    async def insert_within_limit(
        self,
        account_id: ObjectId,
        name: str,
        url: str,
        events: list[str],
        secret_enc: str,
        limit: int,
        fields: Doc | None = None,  # endpoint controls (filter, headers, ordering), max_in_flight
    ) -> Webhook | None:
        """Insert a webhook unless the account already has ``limit``; None when it has.

        Each webhook holds one of the account's quota slots ``0 .. limit-1`` (unique per account, index
        ``account_quota_slot``), so concurrent creates cannot pass the limit together and never count each
        other: exactly ``limit - count`` of them succeed. Webhooks stored before slots existed count too.
        """
        while True:
            held = await self._col.find({"account_id": account_id}, {"quota_slot": 1}).to_list()
            if len(held) >= limit:
                return None
            used = {d["quota_slot"] for d in held if isinstance(d.get("quota_slot"), int)}
            legacy = sum(1 for d in held if not isinstance(d.get("quota_slot"), int))
            free = [slot for slot in range(limit - legacy) if slot not in used]
            random.shuffle(free)  # racing creates mostly try different slots
            for slot in free:
                try:
                    return await self._insert(account_id, name, url, events, secret_enc, slot, fields)
                except DuplicateKeyError:
                    continue  # another create took this slot meanwhile
            if not free:
                return None

    async def insert(
        self,
        account_id: ObjectId,
        name: str,
        url: str,
        events: list[str],
        secret_enc: str,
        extra: Doc | None = None,  # endpoint controls: filter, headers, ordering
        *,
        max_in_flight: int | None = None,
    ) -> Webhook:
        """Insert without the limit (tools and fixtures); the webhook still counts toward it."""
        fields = {**(extra or {}), "max_in_flight": max_in_flight}
        return await self._insert(account_id, name, url, events, secret_enc, None, fields)

    async def _insert(
        self,
        account_id: ObjectId,
        name: str,
        url: str,
        events: list[str],
        secret_enc: str,
        slot: int | None,
        fields: Doc | None,
    ) -> Webhook:
        now = utcnow()
        doc: Doc = {
            "account_id": account_id,
            "name": name,
            "url": url,
            "events": events,
            "enabled": True,
            "secret_enc": secret_enc,
            "previous_secrets": [],
            "consecutive_failures": 0,
            "disabled_reason": None,
            "disabled_at": None,
            "max_in_flight": None,
            "created_at": now,
            "updated_at": now,
            **(fields or {}),
        }
        if slot is not None:
            doc["quota_slot"] = slot
        result = await self._col.insert_one(doc)
        doc["_id"] = result.inserted_id
        return Webhook.from_doc(doc)

    async def get(self, account_id: ObjectId, webhook_id: ObjectId) -> Webhook | None:
        doc = await self._col.find_one({"_id": webhook_id, "account_id": account_id})
        return Webhook.from_doc(doc) if doc else None

    async def get_many(self, ids: list[ObjectId]) -> dict[ObjectId, Webhook]:
        """Webhooks by id (internal, worker side: not account-scoped)."""
        return {d["_id"]: Webhook.from_doc(d) async for d in find_by_ids(self._col, ids)}

    async def count(self, account_id: ObjectId) -> int:
        return await self._col.count_documents({"account_id": account_id})

    async def page(self, account_id: ObjectId, first: int, after: ObjectId | None) -> Page[Webhook]:
        query: Doc = {"account_id": account_id}
        if after is not None:
            query["_id"] = {"$lt": after}
        docs = await self._col.find(query).sort("_id", DESCENDING).limit(first + 1).to_list()
        return Page([Webhook.from_doc(d) for d in docs[:first]], has_next_page=len(docs) > first)

    async def subscribed(self, account_id: ObjectId, event: str) -> list[Webhook]:
        """Every webhook of the account subscribed to ``event``, enabled or not."""
        docs = await self._col.find({"account_id": account_id, "events": event}).to_list()
        return [Webhook.from_doc(d) for d in docs]

    async def all_of(self, account_id: ObjectId) -> list[Webhook]:
        """Every webhook of the account (bounded by the per-account limit)."""
        return [Webhook.from_doc(d) async for d in self._col.find({"account_id": account_id})]

    async def update(
        self, account_id: ObjectId, webhook_id: ObjectId, changes: dict[str, Any]
    ) -> Webhook | None:
        doc = await self._col.find_one_and_update(
            {"_id": webhook_id, "account_id": account_id},
            {"$set": {**changes, "updated_at": utcnow()}},
            return_document=ReturnDocument.AFTER,
        )
        return Webhook.from_doc(doc) if doc else None

    async def replace_secret(
        self,
        account_id: ObjectId,
        webhook_id: ObjectId,
        expected_enc: str,
        secret_enc: str,
        previous: list[PreviousSecret],
    ) -> Webhook | None:
        """Swap the signing secret if it is still ``expected_enc`` (no lost update between two rotations)."""
        doc = await self._col.find_one_and_update(
            {"_id": webhook_id, "account_id": account_id, "secret_enc": expected_enc},
            {
                "$set": {
                    "secret_enc": secret_enc,
                    "previous_secrets": [
                        {"secret_enc": p.secret_enc, "expires_at": p.expires_at} for p in previous
                    ],
                    "updated_at": utcnow(),
                }
            },
            return_document=ReturnDocument.AFTER,
        )
        return Webhook.from_doc(doc) if doc else None

    async def reencrypt_all(self, rewrap: Callable[[str], str | None]) -> int:
        """Apply ``rewrap`` (None: already current) to every stored secret and custom header value; return
        how many webhooks changed.

        Each update is conditional on the current secret and headers being unchanged since they were read
        (every signing secret rotation changes the secret), so a concurrent change is never overwritten; a
        webhook that changed meanwhile is read again and re-encrypted then (a rotation during the command
        moves the old secret, still under the old key, into ``previous_secrets``: skipping it would leave a
        secret that no key but the retired one can read). Raises ``ReencryptionIncomplete`` if a webhook
        kept changing."""
        changed = 0
        async for doc in self._col.find({}, _KEY_FIELDS):
            for _ in range(REENCRYPT_TRIES):
                planned = _rewrapped(doc, rewrap)
                if planned is None:
                    break
                condition, update = planned
                if (await self._col.update_one(condition, {"$set": update})).modified_count:
                    changed += 1
                    break
                found = await self._col.find_one({"_id": doc["_id"]}, _KEY_FIELDS)
                if found is None:  # deleted meanwhile
                    break
                doc = found
            else:
                raise ReencryptionIncomplete(f"webhook {doc['_id']} kept changing: run the command again")
        return changed

    async def delete(self, account_id: ObjectId, webhook_id: ObjectId) -> bool:
        result = await self._col.delete_one({"_id": webhook_id, "account_id": account_id})
        return result.deleted_count == 1

    # -- delivery outcomes (worker side) -------------------------------------------------------------

    async def add_failures(self, webhook_id: ObjectId, count: int) -> int | None:
        """Add ``count`` failed deliveries (atomically); the new consecutive count, None if deleted."""
        doc = await self._col.find_one_and_update(
            {"_id": webhook_id},
            {"$inc": {"consecutive_failures": count}},
            return_document=ReturnDocument.AFTER,
        )
        return None if doc is None else int(doc["consecutive_failures"])

    async def disable_once(self, webhook_id: ObjectId, threshold: int) -> Webhook | None:
        """Disable an enabled webhook still at or over ``threshold``; the webhook if *this* call did it."""
        now = utcnow()
        disabled = await self._col.find_one_and_update(
            {"_id": webhook_id, "enabled": True, "consecutive_failures": {"$gte": threshold}},
            {
                "$set": {
                    "enabled": False,
                    "disabled_reason": (
                        f"Disabled automatically after {threshold} consecutive failed deliveries"
                    ),
                    "disabled_at": now,
                    "updated_at": now,
                }
            },
            return_document=ReturnDocument.AFTER,
        )
        return Webhook.from_doc(disabled) if disabled else None

    async def reset_failures(self, webhook_ids: list[ObjectId]) -> int:
        """Set these webhooks' consecutive failures to 0; how many had some."""
        if not webhook_ids:
            return 0
        result = await self._col.update_many(
            {"_id": {"$in": webhook_ids}, "consecutive_failures": {"$ne": 0}},
            {"$set": {"consecutive_failures": 0}},
        )
        return result.modified_count


REENCRYPT_TRIES = 10
_KEY_FIELDS = {"secret_enc": 1, "previous_secrets": 1, "headers": 1}


class ReencryptionIncomplete(RuntimeError):
    """A webhook changed every time it was about to be re-encrypted."""


def _rewrapped(doc: Doc, rewrap: Callable[[str], str | None]) -> tuple[Doc, Doc] | None:
    """The condition and ``$set`` that re-encrypt ``doc``'s secrets and header values, or None if every
    one of them is under the newest key already."""
    previous = list(doc.get("previous_secrets") or [])
    headers = list(doc.get("headers") or [])
    new_current = rewrap(doc["secret_enc"])
    new_previous = [rewrap(p["secret_enc"]) for p in previous]
    new_headers = [rewrap(h["value_enc"]) for h in headers]
    if new_current is None and all(n is None for n in new_previous) and all(n is None for n in new_headers):
        return None
    update: Doc = {
        "secret_enc": new_current or doc["secret_enc"],
        "previous_secrets": [
            {**p, "secret_enc": n or p["secret_enc"]} for p, n in zip(previous, new_previous, strict=True)
        ],
    }
    condition: Doc = {"_id": doc["_id"], "secret_enc": doc["secret_enc"]}
    if previous:
        condition["previous_secrets"] = previous
    if headers:
        update["headers"] = [
            {**h, "value_enc": n or h["value_enc"]} for h, n in zip(headers, new_headers, strict=True)
        ]
        condition["headers"] = headers
    return condition, update
