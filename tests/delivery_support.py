"""Helpers shared by the delivery tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from bson import ObjectId
from pymongo.asynchronous.collection import AsyncCollection

from tests.support import GraphQLClient

T = TypeVar("T")

PUBLISH = """
mutation($input: PublishEventInput!) {
  publishEvent(input: $input) {
    event { id event replayed deliveries { id webhookId status } }
    errors { field code message }
  }
}"""

DELIVERY = """
query($id: ID!) {
  delivery(id: $id) {
    id webhookId eventId event status nextAttemptAt attemptCount
    attempts { id number trigger startedAt durationMs statusCode requestHeaders responseHeaders responseBody
               errorClass error
               deliveryStatus nextAttemptAt }
  }
}"""

CREATE = """
mutation($input: CreateWebhookInput!) {
  createWebhook(input: $input) { webhook { id name enabled } secret errors { field code message } }
}"""


def audit_log(**overrides: Any) -> dict[str, Any]:
    return {
        "action": "create_application",
        "resourceType": "job_application",
        "resourceId": "507f1f77bcf86cd799439011",
        "userId": "507f191e810c19729de860ea",
        "userName": "John Doe",
        "userEmail": "john@example.com",
        **overrides,
    }


def publish_input(event: str = "JOB_APPLICATION_CREATED", **overrides: Any) -> dict[str, Any]:
    return {
        "event": event,
        "log": audit_log(),
        "details": {
            "method": "POST",
            "path": "/job-applications",
            "candidateName": "Jane Smith",
            "jobTitle": "Senior Developer",
        },
        **overrides,
    }


async def create_webhook(
    gql: GraphQLClient, url: str, events: list[str] | None = None, name: str = "Receiver"
) -> tuple[str, str]:
    payload = await gql.execute(
        CREATE, {"input": {"name": name, "url": url, "events": events or ["JOB_APPLICATION_CREATED"]}}
    )
    created = payload["createWebhook"]
    assert created["errors"] == [], created["errors"]
    return created["webhook"]["id"], created["secret"]


async def publish(gql: GraphQLClient, **overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = (await gql.execute(PUBLISH, {"input": publish_input(**overrides)}))[
        "publishEvent"
    ]
    return payload


async def delivery(gql: GraphQLClient, delivery_id: str) -> dict[str, Any]:
    found: dict[str, Any] = (await gql.execute(DELIVERY, {"id": delivery_id}))["delivery"]
    return found


async def poll(fetch: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float = 20.0) -> T:
    """What ``fetch`` answers once ``done`` holds for it, asked every 50 ms."""
    async with asyncio.timeout(timeout):
        while not done(found := await fetch()):  # noqa: ASYNC110 - polls the API
            await asyncio.sleep(0.05)
    return found


async def wait_for_status(
    gql: GraphQLClient, delivery_id: str, *statuses: str, timeout: float = 20.0
) -> dict[str, Any]:
    return await poll(lambda: delivery(gql, delivery_id), lambda d: d["status"] in statuses, timeout)


async def wait_for_attempt_count(
    gql: GraphQLClient, delivery_id: str, count: int = 1, timeout: float = 20.0
) -> dict[str, Any]:
    """The delivery once at least ``count`` attempts of it are recorded (PENDING is also the state before any
    attempt, so waiting for that status proves nothing)."""
    return await poll(lambda: delivery(gql, delivery_id), lambda d: d["attemptCount"] >= count, timeout)


WEBHOOK_STATUS = "query($id: ID!) { webhook(id: $id) { id enabled disabledReason disabledAt updatedAt } }"


async def webhook_status(gql: GraphQLClient, webhook_id: str) -> dict[str, Any]:
    found: dict[str, Any] = (await gql.execute(WEBHOOK_STATUS, {"id": webhook_id}))["webhook"]
    return found


async def until_disabled(gql: GraphQLClient, webhook_id: str) -> dict[str, Any]:
    """The webhook once the worker has disabled it: the disable follows the record of the last failure (the
    outcome is stored first, then counted), so a reader may see that failure a moment before the disable."""
    return await poll(lambda: webhook_status(gql, webhook_id), lambda w: not w["enabled"])


async def until_closed(events: AsyncCollection[dict[str, Any]], event_ids: list[ObjectId]) -> None:
    """Wait until no outbox keeps these events open (no batch outbox lists them, none is open by itself)."""
    still_open = {"open": True, "$or": [{"_id": {"$in": event_ids}}, {"events._id": {"$in": event_ids}}]}
    async with asyncio.timeout(30):
        while await events.count_documents(still_open):  # noqa: ASYNC110 - polls the store
            await asyncio.sleep(0.1)
