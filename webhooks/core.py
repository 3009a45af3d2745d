"""The shared core, wired once per process (API lifespan or worker start-up) from settings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from pymongo import AsyncMongoClient

from webhooks.crypto import SecretBox, load_secret_box
from webhooks.db import Collections, Doc, collections, connect, ensure_indexes
from webhooks.pubsub import Publisher
from webhooks.queue import DeliveryQueue
from webhooks.ratelimit import RateLimiter
from webhooks.repositories.accounts import AccountRepository, ApiKeyRepository
from webhooks.repositories.deliveries import DeliveryRepository
from webhooks.repositories.events import EventRepository
from webhooks.repositories.webhooks import WebhookRepository
from webhooks.services.deliveries import DeliveryService
from webhooks.services.webhooks import WebhookService
from webhooks.settings import Settings
from webhooks.ssrf import Resolver, SystemResolver, check_url_destination

# How the API and the worker resolve webhook hosts (the SSRF checks' view of DNS). A seam for tests,
# which swap in a resolver with fixed answers; production always uses the operating system's.
resolver_factory: Callable[[], Resolver] = SystemResolver


@dataclass(slots=True)
class Core:
    settings: Settings
    client: AsyncMongoClient[Doc]
    cols: Collections
    box: SecretBox
    queue: DeliveryQueue
    publisher: Publisher
    accounts: AccountRepository
    api_keys: ApiKeyRepository
    webhook_repo: WebhookRepository
    event_repo: EventRepository
    delivery_repo: DeliveryRepository
    webhooks: WebhookService
    deliveries: DeliveryService
    resolver: Resolver
    rate_limiter: RateLimiter

    @classmethod
    def build(cls, settings: Settings, client: AsyncMongoClient[Doc], queue: DeliveryQueue) -> Core:
        cols = collections(client, settings)
        box = load_secret_box(settings)
        webhook_repo = WebhookRepository(cols)
        event_repo = EventRepository(cols)
        delivery_repo = DeliveryRepository(cols)
        resolver = resolver_factory()
        publisher = Publisher(queue.pool)

        async def check_destination(url: str) -> None:
            await check_url_destination(
                url, allow_private=settings.allow_private_destinations, resolver=resolver
            )

        return cls(
            settings=settings,
            client=client,
            cols=cols,
            box=box,
            queue=queue,
            publisher=publisher,
            accounts=AccountRepository(cols),
            api_keys=ApiKeyRepository(cols),
            webhook_repo=webhook_repo,
            event_repo=event_repo,
            delivery_repo=delivery_repo,
            webhooks=WebhookService(
                webhook_repo, box, settings, check_destination, notify_status=publisher.webhook_status
            ),
            deliveries=DeliveryService(settings, webhook_repo, event_repo, delivery_repo, queue),
            resolver=resolver,
            rate_limiter=RateLimiter(queue.pool, settings),
        )


@asynccontextmanager
async def open_core(settings: Settings) -> AsyncIterator[Core]:
    client = connect(settings)
    try:
        queue = await DeliveryQueue.connect(settings)
        try:
            core = Core.build(settings, client, queue)
            await ensure_indexes(core.cols)
            yield core
        finally:
            await queue.close()
    finally:
        await client.close()


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[Collections]:
    """MongoDB only (for commands that need no queue, such as ``create-account``)."""
    client = connect(settings)
    try:
        cols = collections(client, settings)
        await ensure_indexes(cols)
        yield cols
    finally:
        await client.close()
