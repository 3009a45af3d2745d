"""API-key authentication, answered from a short in-process cache.

Every GraphQL request authenticates; a store round trip per request was a large share of the store's
load. Lookups are cached for ``auth_cache_ttl`` seconds (1 by default; a key in use is refreshed ahead of
that, see ``webhooks.cache``); revoking a key drops it from every process at once through
``webhooks.invalidation``, so the TTL only bounds staleness if a message is lost.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from bson import ObjectId

from webhooks.cache import TTLCache, read_through
from webhooks.crypto import hash_api_key
from webhooks.invalidation import Invalidation, Invalidations
from webhooks.models import Principal, Scope
from webhooks.repositories.accounts import ApiKeyRepository
from webhooks.timeutil import utcnow

API_KEY = "api_key"


class Authenticator:
    def __init__(self, repo: ApiKeyRepository, invalidations: Invalidations, ttl: float) -> None:
        self._repo = repo
        self._invalidations = invalidations
        # key hash -> the principal; and the hashes of keys that are unknown or revoked
        self._cache: TTLCache[str, Principal] = TTLCache(ttl)
        self._missing: TTLCache[str, bool] = TTLCache(ttl)
        invalidations.on(self._invalidate)

    async def issue(self, account_id: ObjectId, scopes: frozenset[Scope], label: str = "default") -> str:
        return await self._repo.issue(account_id, scopes, label)

    async def authenticate(self, key: str) -> Principal | None:
        digest = hash_api_key(key)
        if self._missing.get(digest):
            return None

        async def lookup(digests: list[str]) -> dict[str, Principal]:
            principal = await self._repo.authenticate(key)
            return {} if principal is None else dict.fromkeys(digests, principal)

        principal = (await read_through(self._cache, [digest], lookup)).get(digest)
        if principal is None:
            self._missing.put(digest, True)
            return None
        if principal.expires_at is not None and principal.expires_at <= utcnow():  # a portal session ended
            self._cache.drop(digest)
            return None
        return principal

    async def issue_portal_session(
        self, account_id: ObjectId, ttl: timedelta
    ) -> tuple[ObjectId, str, datetime]:
        return await self._repo.issue_portal_session(account_id, ttl)

    async def revoke_portal_session(self, account_id: ObjectId, session_id: ObjectId) -> bool:
        revoked = await self._repo.revoke_portal_session(account_id, session_id)
        if revoked:
            await self._invalidations.publish(Invalidation(API_KEY, str(session_id), str(account_id)))
        return revoked

    async def revoke(self, account_id: ObjectId, key_id: ObjectId) -> bool:
        revoked = await self._repo.revoke(account_id, key_id)
        if revoked:
            await self._invalidations.publish(Invalidation(API_KEY, str(key_id), str(account_id)))
        return revoked

    def _invalidate(self, message: Invalidation) -> None:
        if message.kind == "all":
            self._cache.clear()
            self._missing.clear()
        elif message.kind == API_KEY:
            self._cache.drop_where(lambda _, p: str(p.key_id) == message.id)
