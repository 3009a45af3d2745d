"""The shared core, wired once per process (API lifespan or worker start-up) from settings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from arq.connections import ArqRedis
from bson import ObjectId
from pymongo import AsyncMongoClient

from webhooks.crypto import SecretBox, load_secret_box
from webhooks.db import Collections, Doc, collections, connect, ensure_indexes
from webhooks.events import EventName
from webhooks.handoff import EventHandoff
from webhooks.invalidation import Invalidations, listening
from webhooks.lanes import Lanes
from webhooks.models import Webhook
from webhooks.operational import webhook_disabled_body
from webhooks.pubsub import Publisher
from webhooks.queue import connect_redis, lanes_of
from webhooks.ratelimit import RateLimiter
from webhooks.repositories.accounts import AccountRepository, ApiKeyRepository
from webhooks.repositories.deliveries import DeliveryRepository
from webhooks.repositories.events import EventRepository
from webhooks.repositories.expiry import ExpiryRepository
from webhooks.repositories.sequences import SequenceRepository
from webhooks.repositories.webhooks import WebhookRepository
from webhooks.services.auth import Authenticator
from webhooks.services.deliveries import DeliveryService
from webhooks.services.webhook_cache import WebhookCache
from webhooks.services.webhooks import WebhookService
from webhooks.settings import Settings
from webhooks.ssrf import Resolver, SystemResolver, check_url_destination
from webhooks.timeutil import utcnow

# How the API and the worker resolve webhook hosts (the SSRF checks' view of DNS). A seam for tests,
# which swap in a resolver with fixed answers; production always uses the operating system's.
resolver_factory: Callable[[], Resolver] = SystemResolver


@dataclass(slots=True)
class Core:
    settings: Settings
    client: AsyncMongoClient[Doc]
    box: SecretBox
    redis: ArqRedis
    lanes: Lanes
    handoff: EventHandoff
    publisher: Publisher
    accounts: AccountRepository
    api_keys: Authenticator  # cached; same calls as ApiKeyRepository
    invalidations: Invalidations
    webhook_cache: WebhookCache
    webhook_repo: WebhookRepository
    event_repo: EventRepository
    delivery_repo: DeliveryRepository
    expiry: ExpiryRepository
    webhooks: WebhookService
    deliveries: DeliveryService
    resolver: Resolver
    rate_limiter: RateLimiter

    @classmethod
    def build(cls, settings: Settings, client: AsyncMongoClient[Doc], redis: ArqRedis) -> Core:
        cols = collections(client, settings)
        box = load_secret_box(settings)
        webhook_repo = WebhookRepository(cols)
        event_repo = EventRepository(cols)
        delivery_repo = DeliveryRepository(cols, event_repo)
        resolver = resolver_factory()
        publisher = Publisher(redis)
        lanes = lanes_of(redis, settings)
        handoff = EventHandoff(redis, settings.queue_name, settings.event_handoff_ttl)
        invalidations = Invalidations(redis)
        webhook_cache = WebhookCache(webhook_repo, invalidations, settings.webhook_cache_ttl)

        async def check_destination(url: str) -> None:
            await check_url_destination(
                url, allow_private=settings.allow_private_destinations, resolver=resolver
            )

        sequences = SequenceRepository(cols)
        deliveries = DeliveryService(
            settings,
            webhook_repo,
            webhook_cache,
            event_repo,
            delivery_repo,
            lanes,
            sequences,
            handoff,
        )

        async def forget(webhook_id: ObjectId, _account_id: ObjectId) -> None:
            """A deleted webhook: its lane state (limit, breaker) and its sequence counters go."""
            await lanes.forget(str(webhook_id))
            await sequences.forget(webhook_id)

        async def status_changed(webhook: Webhook) -> None:
            """A user enabled or disabled a webhook: the live feed, and ``webhook.disabled`` to the others."""
            try:
                if not webhook.enabled:
                    body = webhook_disabled_body(
                        webhook.id,
                        webhook.name,
                        webhook.disabled_reason or "",
                        webhook.consecutive_failures,
                        now=utcnow(),
                    )
                    await deliveries.publish_system(
                        webhook.account_id, EventName.WEBHOOK_DISABLED, body, webhook.id
                    )
            finally:
                await publisher.webhook_status(webhook)

        return cls(
            settings=settings,
            client=client,
            box=box,
            redis=redis,
            lanes=lanes,
            handoff=handoff,
            publisher=publisher,
            accounts=AccountRepository(cols),
            api_keys=Authenticator(ApiKeyRepository(cols), invalidations, settings.auth_cache_ttl),
            invalidations=invalidations,
            webhook_cache=webhook_cache,
            webhook_repo=webhook_repo,
            event_repo=event_repo,
            delivery_repo=delivery_repo,
            expiry=ExpiryRepository(cols),
            webhooks=WebhookService(
                webhook_repo,
                box,
                settings,
                check_destination,
                notify_status=status_changed,
                apply_limit=lambda w: lanes.set_limit(
                    str(w.id), w.in_flight_limit(settings.webhook_max_in_flight)
                ),
                changed=webhook_cache.changed,
                forget=forget,
            ),
            deliveries=deliveries,
            resolver=resolver,
            rate_limiter=RateLimiter(redis, settings),
        )


@asynccontextmanager
async def open_core(settings: Settings) -> AsyncIterator[Core]:
    client = connect(settings)
    try:
        redis = await connect_redis(settings)
        try:
            core = Core.build(settings, client, redis)
            await ensure_indexes(collections(client, settings))
            async with listening(core.invalidations):
                yield core
        finally:
            await redis.aclose()
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
