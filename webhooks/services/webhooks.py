"""Managing webhooks: create, read, list, update, delete, all scoped to the caller's account."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bson import ObjectId

from webhooks.crypto import SecretBox, new_signing_secret
from webhooks.errors import ErrorCode, UserError, UserErrors
from webhooks.events import EventName
from webhooks.ids import parse_id
from webhooks.models import Principal, Webhook
from webhooks.pagination import Page, check_page_size, decode_cursor
from webhooks.repositories.webhooks import WebhookRepository
from webhooks.settings import Settings
from webhooks.timeutil import utcnow
from webhooks.urls import normalize_url

MAX_NAME_LENGTH = 100

# A destination check (``webhooks.ssrf``) takes a normalized URL and raises ``UserErrors`` if refused.
DestinationCheck = Callable[[str, str], Awaitable[None]]


async def no_destination_check(url: str, field: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class CreatedWebhook:
    webhook: Webhook
    secret: str


def _name(raw: str, errors: list[UserError]) -> str:
    name = raw.strip()
    if not name:
        errors.append(UserError("name", ErrorCode.REQUIRED, "name must not be empty"))
    elif len(name) > MAX_NAME_LENGTH:
        errors.append(
            UserError("name", ErrorCode.TOO_LONG, f"name must be at most {MAX_NAME_LENGTH} characters")
        )
    return name


def _events(raw: list[EventName], errors: list[UserError]) -> list[str]:
    events = list(dict.fromkeys(e.value for e in raw))
    if not events:
        errors.append(UserError("events", ErrorCode.REQUIRED, "events must name at least one event"))
    return events


class WebhookService:
    def __init__(
        self,
        repo: WebhookRepository,
        box: SecretBox,
        settings: Settings,
        check_destination: DestinationCheck = no_destination_check,
    ) -> None:
        self._repo = repo
        self._box = box
        self._settings = settings
        self._check_destination = check_destination

    async def _url(self, raw: str, errors: list[UserError]) -> str:
        try:
            url = normalize_url(raw, allow_http=self._settings.allow_http)
            await self._check_destination(url, "url")
        except UserErrors as exc:
            errors.extend(exc.errors)
            return raw
        return url

    async def create(self, who: Principal, name: str, url: str, events: list[EventName]) -> CreatedWebhook:
        errors: list[UserError] = []
        clean_name = _name(name, errors)
        clean_url = await self._url(url, errors)
        clean_events = _events(events, errors)
        if errors:
            raise UserErrors(errors)
        limit = self._settings.max_webhooks_per_account
        if await self._repo.count(who.account_id) >= limit:
            raise UserErrors.one(
                None, ErrorCode.LIMIT_EXCEEDED, f"an account can have at most {limit} webhooks"
            )
        secret = new_signing_secret()
        webhook = await self._repo.insert(
            who.account_id, clean_name, clean_url, clean_events, self._box.encrypt(secret)
        )
        return CreatedWebhook(webhook, secret)

    async def get(self, who: Principal, webhook_id: str) -> Webhook:
        """The caller's webhook, or NOT_FOUND: another account's id answers exactly like an unknown one."""
        oid = parse_id(webhook_id)
        webhook = await self._repo.get(who.account_id, oid)
        if webhook is None:
            raise not_found("webhook", webhook_id)
        return webhook

    async def find(self, who: Principal, webhook_id: str) -> Webhook | None:
        try:
            return await self.get(who, webhook_id)
        except UserErrors:
            return None

    async def page(self, who: Principal, first: int, after: str | None) -> Page[Webhook]:
        return await self._repo.page(who.account_id, check_page_size(first), decode_cursor(after))

    async def update(
        self,
        who: Principal,
        webhook_id: str,
        *,
        name: str | None = None,
        url: str | None = None,
        events: list[EventName] | None = None,
        enabled: bool | None = None,
    ) -> Webhook:
        oid = parse_id(webhook_id)
        errors: list[UserError] = []
        changes: dict[str, Any] = {}
        if name is not None:
            changes["name"] = _name(name, errors)
        if url is not None:
            changes["url"] = await self._url(url, errors)
        if events is not None:
            changes["events"] = _events(events, errors)
        if errors:
            raise UserErrors(errors)
        if enabled is True:
            changes.update(enabled=True, disabled_reason=None, disabled_at=None, consecutive_failures=0)
        elif enabled is False:
            changes.update(enabled=False, disabled_reason="Disabled by a user", disabled_at=utcnow())
        if not changes:
            return await self.get(who, webhook_id)
        webhook = await self._repo.update(who.account_id, oid, changes)
        if webhook is None:
            raise not_found("webhook", webhook_id)
        return webhook

    async def delete(self, who: Principal, webhook_id: str) -> ObjectId:
        oid = parse_id(webhook_id)
        if not await self._repo.delete(who.account_id, oid):
            raise not_found("webhook", webhook_id)
        return oid

    def secret_of(self, webhook: Webhook) -> str:
        return self._box.decrypt(webhook.secret_enc)


def not_found(kind: str, raw_id: str, field: str = "id") -> UserErrors:
    return UserErrors.one(field, ErrorCode.NOT_FOUND, f"no {kind} with id {raw_id}")
