from __future__ import annotations

from datetime import datetime, timedelta

from bson import ObjectId

from webhooks.crypto import hash_api_key, new_api_key, new_portal_token
from webhooks.db import Collections
from webhooks.models import Principal, Scope
from webhooks.timeutil import as_utc, utcnow

PORTAL_SESSION = "portal_session"  # api_keys.kind of a portal session token


class AccountRepository:
    def __init__(self, cols: Collections) -> None:
        self._cols = cols

    async def create(self, name: str) -> ObjectId:
        result = await self._cols.accounts.insert_one({"name": name, "created_at": utcnow()})
        return ObjectId(result.inserted_id)

    async def exists(self, account_id: ObjectId) -> bool:
        return await self._cols.accounts.find_one({"_id": account_id}, {"_id": 1}) is not None


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
        expires_at = as_utc(doc["expires_at"]) if doc.get("expires_at") is not None else None
        if expires_at is not None and expires_at <= utcnow():
            return None
        scopes = frozenset(Scope(s) for s in doc["scopes"] if s in {x.value for x in Scope})
        return Principal(
            account_id=doc["account_id"], scopes=scopes, key_id=doc["_id"], expires_at=expires_at
        )

    async def issue_portal_session(
        self, account_id: ObjectId, ttl: timedelta
    ) -> tuple[ObjectId, str, datetime]:
        """A portal session: a token with only ``webhooks:manage`` that expires after ``ttl``, stored hashed
        like an API key. Returns (session id, token, expiry); the token exists in clear only here."""
        token = new_portal_token()
        now = utcnow()
        expires_at = now + ttl
        result = await self._cols.api_keys.insert_one(
            {
                "account_id": account_id,
                "key_hash": hash_api_key(token),
                "prefix": token[:8],
                "label": "portal",
                "kind": PORTAL_SESSION,
                "scopes": [Scope.MANAGE_WEBHOOKS.value],
                "created_at": now,
                "expires_at": expires_at,
                "revoked_at": None,
            }
        )
        return ObjectId(result.inserted_id), token, expires_at

    async def revoke_portal_session(self, account_id: ObjectId, session_id: ObjectId) -> bool:
        result = await self._cols.api_keys.update_one(
            {"_id": session_id, "account_id": account_id, "kind": PORTAL_SESSION, "revoked_at": None},
            {"$set": {"revoked_at": utcnow()}},
        )
        return result.modified_count == 1

    async def revoke(self, account_id: ObjectId, key_id: ObjectId) -> bool:
        result = await self._cols.api_keys.update_one(
            {"_id": key_id, "account_id": account_id, "revoked_at": None}, {"$set": {"revoked_at": utcnow()}}
        )
        return result.modified_count == 1
