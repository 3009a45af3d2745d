"""Managing webhooks: create, read, list, update, delete, all scoped to the caller's account."""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from bson import ObjectId

from webhooks.crypto import SecretBox, new_signing_secret
from webhooks.endpoint_controls import NO_CONTROLS, EndpointControls
from webhooks.errors import ErrorCode, UserError, UserErrors
from webhooks.events import EventName
from webhooks.ids import parse_id
from webhooks.models import PreviousSecret, Principal, Webhook
from webhooks.pagination import Page, check_page_size, decode_cursor
from webhooks.repositories.webhooks import WebhookRepository
from webhooks.settings import Settings
from webhooks.timeutil import utcnow
from webhooks.urls import normalize_url
from webhooks.validation import clean_name, url_text_problem

log = logging.getLogger(__name__)

MAX_NAME_LENGTH = 100
MAX_GRACE_HOURS = 168
MAX_PREVIOUS_SECRETS = 5

# A destination check (``webhooks.ssrf``) takes a normalized URL and raises ``UserErrors`` (field ``url``)
# if its host is, or resolves to, a forbidden address.
DestinationCheck = Callable[[str], Awaitable[None]]
# Told about a webhook whose `enabled` a user changed (the live feed: ``Publisher.webhook_status``).
StatusNotifier = Callable[[Webhook], Awaitable[None]]
# Told about every created, changed or deleted webhook: (webhook id, account id).
ChangeNotifier = Callable[[ObjectId, ObjectId], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class CreatedWebhook:
    webhook: Webhook
    secret: str


def _name(raw: str, errors: list[UserError]) -> str:
    return clean_name("name", raw, MAX_NAME_LENGTH, errors)


def _max_in_flight(raw: int, cap: int, errors: list[UserError]) -> int:
    if not 1 <= raw <= cap:
        errors.append(UserError("maxInFlight", ErrorCode.INVALID, f"maxInFlight must be between 1 and {cap}"))
    return raw


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
        check_destination: DestinationCheck,
        notify_status: StatusNotifier | None = None,
        apply_limit: StatusNotifier | None = None,
        changed: ChangeNotifier | None = None,
        forget: ChangeNotifier | None = None,
    ) -> None:
        self._forget = forget  # drops a deleted webhook's state: lanes (limit, breaker), sequence counters
        self._apply_limit = apply_limit  # tells the lanes about a changed ``maxInFlight`` at once
        self._changed = changed  # drops cached copies in every process (``webhooks.invalidation``)
        self._repo = repo
        self._box = box
        self._settings = settings
        self._check_destination = check_destination
        self._notify_status = notify_status

    async def _url(self, raw: str, errors: list[UserError], current: str | None = None) -> str:
        """``raw`` checked and normalised. Its destination is resolved and checked unless it is the webhook's
        ``current`` URL: a form that sends the URL back unchanged (the portal's edit) must not fail on a
        record that stopped resolving meanwhile; the sender checks every address at connect time anyway."""
        if problem := url_text_problem(raw):
            errors.append(UserError("url", ErrorCode.INVALID_URL, f"url {problem}"))
            return raw
        try:
            url = normalize_url(unicodedata.normalize("NFC", raw), allow_http=self._settings.allow_http)
            if url != current:
                await self._check_destination(url)
        except UserErrors as exc:
            errors.extend(exc.errors)
            return raw
        return url

    async def create(
        self,
        who: Principal,
        name: str,
        url: str,
        events: list[EventName],
        controls: EndpointControls = NO_CONTROLS,
        max_in_flight: int | None = None,
    ) -> CreatedWebhook:
        errors: list[UserError] = []
        clean_name = _name(name, errors)
        clean_url = await self._url(url, errors)
        clean_events = _events(events, errors)
        if max_in_flight is not None:
            _max_in_flight(max_in_flight, self._settings.webhook_max_in_flight_cap, errors)
        extra = controls.creation_fields(self._box, errors)
        if errors:
            raise UserErrors(errors)
        limit = self._settings.max_webhooks_per_account
        secret = new_signing_secret()
        fields = {**(extra or {}), "max_in_flight": max_in_flight}
        webhook = await self._repo.insert_within_limit(
            who.account_id, clean_name, clean_url, clean_events, self._box.encrypt(secret), limit, fields
        )
        if webhook is None:
            raise UserErrors.one(
                None, ErrorCode.LIMIT_EXCEEDED, f"an account can have at most {limit} webhooks"
            )
        await self._notify_changed(webhook.id, who.account_id)
        return CreatedWebhook(webhook, secret)

    async def get(self, who: Principal, webhook_id: str) -> Webhook | None:
        """The caller's webhook, or None: another account's id answers exactly like an unknown one.

        A malformed id is refused (``INVALID_ID``). The same convention as ``DeliveryService.get``.
        """
        return await self._repo.get(who.account_id, parse_id(webhook_id))

    async def _existing(self, who: Principal, webhook_id: str) -> Webhook:
        webhook = await self.get(who, webhook_id)
        if webhook is None:
            raise not_found("webhook", webhook_id)
        return webhook

    async def page(self, who: Principal, first: int | None, after: str | None) -> Page[Webhook]:
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
        controls: EndpointControls = NO_CONTROLS,
        max_in_flight: int | None = None,
    ) -> Webhook:
        # The id first: an unknown webhook is NOT_FOUND whatever else is wrong (and its URL is not resolved).
        before = await self._existing(who, webhook_id)
        errors: list[UserError] = []
        changes: dict[str, Any] = {}
        if max_in_flight is not None:
            cap = self._settings.webhook_max_in_flight_cap
            changes["max_in_flight"] = _max_in_flight(max_in_flight, cap, errors)
        if name is not None:
            changes["name"] = _name(name, errors)
        if url is not None:
            changes["url"] = await self._url(url, errors, current=before.url)
        if events is not None:
            changes["events"] = _events(events, errors)
        changes.update(controls.fields(self._box, errors))
        if errors:
            raise UserErrors(errors)
        # Only a change of state counts: a client that sends the whole form back (`enabled` as it was) must
        # not overwrite why and when the webhook was disabled, nor reset the failure count of auto-disable.
        if enabled is True and not before.enabled:
            changes.update(enabled=True, disabled_reason=None, disabled_at=None, consecutive_failures=0)
        elif enabled is False and before.enabled:
            changes.update(enabled=False, disabled_reason="Disabled by a user", disabled_at=utcnow())
        if not changes:
            return before
        webhook = await self._repo.update(who.account_id, before.id, changes)
        if webhook is None:
            raise not_found("webhook", webhook_id)
        await self._notify_changed(webhook.id, who.account_id)
        # Only a real disable/re-enable is announced on the live feed.
        if enabled is not None and before.enabled != webhook.enabled:
            await self._announce_status(webhook)
        if max_in_flight is not None and self._apply_limit is not None:
            try:
                await self._apply_limit(webhook)
            except Exception:  # stored; every later enqueue writes the limit again
                log.warning("could not apply the in-flight limit of webhook %s", webhook.id, exc_info=True)
        return webhook

    async def _notify_changed(self, webhook_id: ObjectId, account_id: ObjectId) -> None:
        if self._changed is not None:
            await self._changed(webhook_id, account_id)  # best effort inside; caches also expire

    async def _announce_status(self, webhook: Webhook) -> None:
        if self._notify_status is None:
            return
        try:
            await self._notify_status(webhook)
        except Exception:  # the change is stored; the live feed is best effort
            log.warning("could not publish the status change of webhook %s", webhook.id, exc_info=True)

    async def delete(self, who: Principal, webhook_id: str) -> ObjectId:
        oid = parse_id(webhook_id)
        if not await self._repo.delete(who.account_id, oid):
            raise not_found("webhook", webhook_id)
        await self._notify_changed(oid, who.account_id)
        if self._forget is not None:
            try:
                await self._forget(oid, who.account_id)
            except Exception as exc:  # deleted all the same; a breaker left behind expires within a day
                log.warning("could not drop the state of deleted webhook %s (%s)", oid, type(exc).__name__)
        return oid

    async def rotate_secret(
        self, who: Principal, webhook_id: str, grace_period_hours: int = 24
    ) -> CreatedWebhook:
        """A new signing secret; the replaced one keeps signing for ``grace_period_hours``.

        Earlier secrets still inside their own grace period keep it. ``0`` revokes the replaced secret and
        every earlier one at once (the answer to a leaked secret).
        """
        if not 0 <= grace_period_hours <= MAX_GRACE_HOURS:
            raise UserErrors.one(
                "gracePeriodHours",
                ErrorCode.INVALID,
                f"gracePeriodHours must be between 0 and {MAX_GRACE_HOURS}",
            )
        webhook = await self._existing(who, webhook_id)
        now = utcnow()
        previous: list[PreviousSecret] = []
        if grace_period_hours > 0:
            previous = [PreviousSecret(webhook.secret_enc, now + timedelta(hours=grace_period_hours))]
            previous += [p for p in webhook.previous_secrets if p.expires_at > now]
        secret = new_signing_secret()
        rotated = await self._repo.replace_secret(
            who.account_id,
            webhook.id,
            webhook.secret_enc,
            self._box.encrypt(secret),
            previous[:MAX_PREVIOUS_SECRETS],
        )
        if rotated is None:
            raise UserErrors.one(
                "id", ErrorCode.CONFLICT, "the webhook changed meanwhile (deleted or rotated); try again"
            )
        await self._notify_changed(rotated.id, who.account_id)
        return CreatedWebhook(rotated, secret)


def not_found(kind: str, raw_id: str, field: str = "id") -> UserErrors:
    return UserErrors.one(field, ErrorCode.NOT_FOUND, f"no {kind} with id {raw_id}")
