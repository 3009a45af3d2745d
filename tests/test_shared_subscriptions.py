"""Shared subscriptions (graphql_api/shared_subscriptions.py): identical subscriptions run once per message.

Real API processes' apps on loopback, real Redis pub/sub, real WebSocket clients. The first test pins the
Strawberry hooks the module relies on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from bson import ObjectId
from strawberry.asgi import GraphQL
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler

from graphql_api.app import GraphQLView
from graphql_api.shared_subscriptions import RawFrame, SharedSubscriptionsHandler
from tests.test_subscriptions import (
    ATTEMPTS,
    Api,
    GqlSocket,
    fake_attempt,
    feed_settings,
    gql_socket,
    run_api,
    until_live,
    wait_until,
)
from webhooks.pubsub import ATTEMPTS_CHANNEL, attempt_message

SMALL = "subscription { deliveryAttempts { id event } }"


@pytest.fixture(scope="module")
async def api(mongodb_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Api]:
    async with run_api(
        feed_settings(mongodb_url, tmp_path_factory.mktemp("shared")), worker=False
    ) as running:
        yield running


@pytest.fixture(scope="module")
async def redis(api: Api) -> AsyncIterator[aioredis.Redis]:
    assert api.settings.redis_url
    client = aioredis.Redis.from_url(api.settings.redis_url)
    yield client
    await client.aclose()


def test_the_strawberry_hooks_it_relies_on_are_there() -> None:
    # given Strawberry's ASGI view and its graphql-transport-ws handler
    # then the view picks its handler class from the attribute we set, and the handler has the overridable
    # methods we use; pre-encoded frames go through the view's encode_json unchanged
    assert "graphql_transport_ws_handler_class" in vars(GraphQL) or hasattr(
        GraphQL, "graphql_transport_ws_handler_class"
    )
    assert GraphQLView.graphql_transport_ws_handler_class is SharedSubscriptionsHandler
    assert issubclass(SharedSubscriptionsHandler, BaseGraphQLTransportWSHandler)
    for name in ("run_operation", "send_message", "shutdown"):
        assert callable(getattr(BaseGraphQLTransportWSHandler, name))
    frame = '{"id":"1","type":"next","payload":{"data":null}}'
    assert GraphQLView.encode_json(None, RawFrame(frame)) == frame  # type: ignore[arg-type]


async def test_identical_subscriptions_share_one_stream_and_each_gets_every_message(
    api: Api, redis: aioredis.Redis
) -> None:
    # given one account with 5 sockets × 4 identical subscriptions, and another account subscribed too
    account, other = await api.account(), await api.account()
    async with contextlib.AsyncExitStack() as stack:
        sockets = [await stack.enter_async_context(gql_socket(api.url, account.api_key)) for _ in range(5)]
        ops = [(s, await s.subscribe(SMALL, op_id=f"op-{i}")) for s in sockets for i in range(4)]
        theirs = await stack.enter_async_context(gql_socket(api.url, other.api_key))
        their_op = await theirs.subscribe(SMALL)
        for s, op in ops:
            await until_live(redis, s, op, account.id)
        await until_live(redis, theirs, their_op, other.id)
        # then the account's 20 subscriptions are ONE feed subscriber (one execution per message)
        assert api.feed.subscriber_count(ATTEMPTS_CHANNEL, account.id) == 1
        assert api.feed.subscriber_count(ATTEMPTS_CHANNEL, other.id) == 1
        # when 30 attempts of the account are published
        sent = []
        for _ in range(30):
            attempt = fake_attempt(account.id, str(ObjectId()), event="shared")
            sent.append(str(attempt.id))
            await redis.publish(ATTEMPTS_CHANNEL, attempt_message(attempt))
        # then every subscription gets every one, in order, exactly once
        for s, op in ops:
            received: list[str] = []
            while len(received) < len(sent):
                message = await s.message(op, timeout=20)
                attempt = message["payload"]["data"]["deliveryAttempts"]
                if attempt["event"] == "shared":
                    received.append(attempt["id"])
            assert received == sent
        # and the other account got none of them: its next message is its own probe
        await until_live(redis, theirs, their_op, other.id)
        while not theirs.messages[their_op].empty():
            leftover = theirs.messages[their_op].get_nowait()
            assert leftover["payload"]["data"]["deliveryAttempts"]["event"] != "shared"


async def test_a_member_leaving_does_not_end_the_others_and_the_last_one_ends_the_stream(
    api: Api, redis: aioredis.Redis
) -> None:
    account = await api.account()
    async with gql_socket(api.url, account.api_key) as first, gql_socket(api.url, account.api_key) as second:
        # given two identical subscriptions on two sockets
        a = await first.subscribe(SMALL)
        b = await second.subscribe(SMALL)
        await until_live(redis, first, a, account.id)
        await until_live(redis, second, b, account.id)
        # when the first one completes its subscription
        await first.ws.send(json.dumps({"id": a, "type": "complete"}))
        # then the second still gets messages
        attempt = fake_attempt(account.id, str(ObjectId()), event="after")
        await redis.publish(ATTEMPTS_CHANNEL, attempt_message(attempt))
        while True:
            got = (await second.next(b))["deliveryAttempts"]
            if got["event"] == "after":
                break
        assert got["id"] == str(attempt.id)
        # when the second socket closes too, the shared stream leaves the feed
        await second.close()
        await wait_until(lambda: api.feed.subscriber_count(ATTEMPTS_CHANNEL, account.id) == 0, what="no sub")


async def test_an_invalid_shared_subscription_gets_the_same_error_as_a_private_one(api: Api) -> None:
    account = await api.account()
    query = "subscription($w: ID) { deliveryAttempts(webhookId: $w) { id } }"
    async with gql_socket(api.url, account.api_key) as client:
        # given two identical subscriptions to a webhook that does not exist
        ops = [await client.subscribe(query, {"w": str(ObjectId())}) for _ in range(2)]
        # then each ends with NOT_FOUND, as an unshared one would
        for op in ops:
            message = await client.message(op)
            assert message["type"] == "error", message
            assert message["payload"][0]["extensions"]["code"] == "NOT_FOUND"


async def test_subscribers_on_two_api_processes_get_every_message_none_dropped(
    api: Api, redis: aioredis.Redis
) -> None:
    """Scaled-down version of bench P10 (10,000 subscribers on 2 API processes): 2 × 200 subscriptions."""
    account = await api.account()
    async with run_api(api.settings, worker=False) as second, contextlib.AsyncExitStack() as stack:
        clients: list[tuple[GqlSocket, str]] = []
        for base in (api.url, second.url):
            for _ in range(20):
                s = await stack.enter_async_context(gql_socket(base, account.api_key))
                clients.extend([(s, await s.subscribe(ATTEMPTS)) for _ in range(10)])
        for s, op in clients:
            await until_live(redis, s, op, account.id)
        # when 20 attempts are published
        sent = []
        for _ in range(20):
            attempt = fake_attempt(account.id, str(ObjectId()), event="scale", body="x" * 1024)
            sent.append(str(attempt.id))
            await redis.publish(ATTEMPTS_CHANNEL, attempt_message(attempt))

        # then all 400 subscriptions get all 20, and none was dropped
        async def read_all(s: GqlSocket, op: str) -> list[str]:
            got: list[str] = []
            while len(got) < len(sent):
                message = await s.message(op, timeout=30)
                assert message["type"] == "next" and not message["payload"].get("errors"), message
                attempt = message["payload"]["data"]["deliveryAttempts"]
                if attempt["event"] == "scale":
                    got.append(attempt["id"])
            return got

        results = await asyncio.gather(*(read_all(s, op) for s, op in clients))
        assert all(r == sent for r in results)
        assert len(results) == 400
