"""The webhook records that the hot paths read (publish fan-out, the engine), cached for at most
``webhook_cache_ttl`` (1 s), refreshed ahead of that while they are read (``webhooks.cache``), and dropped
in every process as soon as a webhook changes (``webhooks.invalidation``): a deleted or disabled webhook is
never served for more than 1 s."""

from __future__ import annotations

from bson import ObjectId

from webhooks.cache import TTLCache, read_through
from webhooks.invalidation import Invalidation, Invalidations
from webhooks.models import Webhook
from webhooks.repositories.webhooks import WebhookRepository

WEBHOOK = "webhook"


class WebhookCache:
    def __init__(self, repo: WebhookRepository, invalidations: Invalidations, ttl: float) -> None:
        self._repo = repo
        self._invalidations = invalidations
        self._by_id: TTLCache[ObjectId, Webhook] = TTLCache(ttl)
        self._by_account: TTLCache[ObjectId, list[Webhook]] = TTLCache(ttl, max_entries=2_000)
        invalidations.on(self._invalidate)

    async def subscribed(self, account_id: ObjectId, event: str) -> list[Webhook]:
        """Every webhook of the account subscribed to ``event``, enabled or not."""
        webhooks = (await read_through(self._by_account, [account_id], self._of_accounts))[account_id]
        return [w for w in webhooks if event in w.events]

    async def _of_accounts(self, account_ids: list[ObjectId]) -> dict[ObjectId, list[Webhook]]:
        return {a: await self._repo.all_of(a) for a in account_ids}

    async def get_many(self, ids: set[ObjectId]) -> dict[ObjectId, Webhook]:
        """Webhooks by id (internal, worker side: not account-scoped); deleted ones are left out."""
        return await read_through(self._by_id, ids, self._repo.get_many)

    def cached(self, webhook_id: ObjectId) -> Webhook | None:
        """The webhook if this process holds it (no read; one due for a refresh is reloaded in the
        background, as ``get_many`` does)."""
        webhook = self._by_id.get(webhook_id)
        if webhook is not None and self._by_id.claim_refresh(webhook_id):
            self._by_id.refresh([webhook_id], self._repo.get_many)
        return webhook

    async def changed(self, webhook_id: ObjectId, account_id: ObjectId) -> None:
        await self._invalidations.publish(Invalidation(WEBHOOK, str(webhook_id), str(account_id)))

    def _invalidate(self, message: Invalidation) -> None:
        if message.kind == "all":
            self._by_id.clear()
            self._by_account.clear()
        elif message.kind == WEBHOOK:
            if message.id is not None:
                self._by_id.drop(ObjectId(message.id))
            if message.account_id is not None:
                self._by_account.drop(ObjectId(message.account_id))
