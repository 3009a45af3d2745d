from __future__ import annotations

from bson import ObjectId

from webhooks.crypto import hash_api_key, new_api_key
from webhooks.db import Collections
from webhooks.models import Principal, Scope
from webhooks.timeutil import utcnow


class AccountRepository:
    def __init__(self, cols: Collections) -> None:
        self._cols = cols

    async def create(self, name: str) -> ObjectId:
        result = await self._cols.accounts.insert_one({"name": name, "created_at": utcnow()})
        return ObjectId(result.inserted_id)


class ApiKeyRepository:
    def __init__(self, cols: Collections) -> None:
        self._cols = cols

    async def issue(self, account_id: ObjectId, scopes: frozenset[Scope], label: str = "default") -> str:
        """Create a key and return it: the only time it exists in clear."""
        key = new_api_key()
        await self._cols.api_keys.insert_one(
            {
                "account_id": account_id,
                "key_hash": hash_api_key(key),
                "prefix": key[:8],
                "label": label,
                "scopes": sorted(s.value for s in scopes),
                "created_at": utcnow(),
                "revoked_at": None,
            }
        )
        return key

    async def authenticate(self, key: str) -> Principal | None:
        doc = await self._cols.api_keys.find_one({"key_hash": hash_api_key(key)})
        if doc is None or doc.get("revoked_at") is not None:
            return None
        scopes = frozenset(Scope(s) for s in doc["scopes"] if s in {x.value for x in Scope})
        return Principal(account_id=doc["account_id"], scopes=scopes, key_id=doc["_id"])

    async def revoke(self, account_id: ObjectId, key_id: ObjectId) -> bool:
        result = await self._cols.api_keys.update_one(
            {"_id": key_id, "account_id": account_id, "revoked_at": None}, {"$set": {"revoked_at": utcnow()}}
        )
        return result.modified_count == 1
