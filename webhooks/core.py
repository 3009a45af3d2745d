"""The shared core, wired once per process (API lifespan or worker start-up) from settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from pymongo import AsyncMongoClient

from webhooks.crypto import SecretBox, load_secret_box
from webhooks.db import Collections, Doc, collections, connect, ensure_indexes
from webhooks.repositories.accounts import AccountRepository, ApiKeyRepository
from webhooks.repositories.webhooks import WebhookRepository
from webhooks.services.webhooks import WebhookService
from webhooks.settings import Settings


@dataclass(slots=True)
class Core:
    settings: Settings
    client: AsyncMongoClient[Doc]
    cols: Collections
    box: SecretBox
    accounts: AccountRepository
    api_keys: ApiKeyRepository
    webhook_repo: WebhookRepository
    webhooks: WebhookService

    @classmethod
    def build(cls, settings: Settings, client: AsyncMongoClient[Doc]) -> Core:
        cols = collections(client, settings)
        box = load_secret_box(settings)
        webhook_repo = WebhookRepository(cols)
        return cls(
            settings=settings,
            client=client,
            cols=cols,
            box=box,
            accounts=AccountRepository(cols),
            api_keys=ApiKeyRepository(cols),
            webhook_repo=webhook_repo,
            webhooks=WebhookService(webhook_repo, box, settings),
        )


@asynccontextmanager
async def open_core(settings: Settings) -> AsyncIterator[Core]:
    client = connect(settings)
    try:
        core = Core.build(settings, client)
        await ensure_indexes(core.cols)
        yield core
    finally:
        await client.close()
