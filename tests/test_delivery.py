"""The delivery engine end to end: GraphQL publish → worker → real receivers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest
from aiohttp import web
from bson import ObjectId
from standardwebhooks import Webhook as StandardWebhook

from tests.conftest import make_settings
from tests.delivery_support import (
    PUBLISH,
    create_webhook,
    delivery,
    publish,
    publish_input,
    wait_for_status,
)
from tests.receiver import Receiver, sequence, status
from tests.support import Stack, read_http_message, run_stack
from webhooks.db import raw_collections
from webhooks_cli.embedded import free_port

SCHEDULE = 0.0, 0.2, 0.4


@pytest.fixture(scope="module")
async def stack(mongodb_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    settings = make_settings(
        mongodb_url,
        tmp_path_factory.mktemp("delivery"),
        retry_schedule=SCHEDULE,
    )
    async with run_stack(settings) as running:
        yield running


def path() -> str:
    return f"/hook/{uuid.uuid4().hex[:8]}"


async def test_a_published_event_reaches_the_receiver_in_the_spec_shape_and_signed(
    stack: Stack, receiver: Receiver
) -> None:
    # given a webhook subscribed to job_application_created
    account = await stack.account()
    p = path()
    webhook_id, secret = await create_webhook(account.gql, receiver.url(p))
    # when the backend publishes the event
    published = await publish(account.gql)
    # then one delivery is created, and the receiver gets the spec's payload, signed
    assert published["errors"] == []
    (created,) = published["event"]["deliveries"]
    assert created["webhookId"] == webhook_id
    (got,) = await receiver.wait_for(p, 1)
    body = got.json()
    assert list(body) == ["event", "timestamp", "data"]
    assert body["event"] == "job_application_created"
    assert list(body["data"]) == ["log", "details"]  # type: ignore[call-overload]
    assert body["data"]["log"] == {  # type: ignore[index]
        "action": "create_application",
        "resourceType": "job_application",
        "resourceId": "507f1f77bcf86cd799439011",
        "userId": "507f191e810c19729de860ea",
        "userName": "John Doe",
        "userEmail": "john@example.com",
        "timestamp": body["timestamp"],
    }
    assert body["data"]["details"]["candidateName"] == "Jane Smith"  # type: ignore[index]
    assert got.body == json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    assert got.spec_signature_valid(secret)
    StandardWebhook(secret).verify(got.body, got.headers)  # raises if invalid
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["X-Webhook-Event"] == "job_application_created"
    assert got.headers["X-Webhook-Delivery"] == created["id"]
    assert got.headers["webhook-id"] == created["id"]
    # and the delivery log shows one successful automatic attempt
    done = await wait_for_status(account.gql, created["id"], "SUCCEEDED")
    (attempt,) = done["attempts"]
    assert (attempt["number"], attempt["trigger"], attempt["statusCode"]) == (1, "AUTOMATIC", 200)
    assert attempt["responseBody"] == "OK" and attempt["deliveryStatus"] == "SUCCEEDED"
    assert attempt["durationMs"] is not None and attempt["nextAttemptAt"] is None
    # and the request headers as sent are recorded, with the signatures redacted
    sent = attempt["requestHeaders"]
    assert sent["X-Webhook-Event"] == "job_application_created"
    assert sent["X-Webhook-Signature"] == sent["webhook-signature"] == "[redacted]"
    assert got.headers["X-Webhook-Signature"] not in str(done) and secret not in str(done)


async def test_fan_out_goes_only_to_subscribed_webhooks_of_the_publishing_account(
    stack: Stack, receiver: Receiver
) -> None:
    # given two subscribed webhooks, one subscribed to another event, and another account's webhook
    account, other = await stack.account(), await stack.account()
    a, b, c, d = path(), path(), path(), path()
    await create_webhook(account.gql, receiver.url(a))
    await create_webhook(account.gql, receiver.url(b), ["JOB_APPLICATION_CREATED", "OFFER_SENT"])
    await create_webhook(account.gql, receiver.url(c), ["OFFER_SENT"])
    await create_webhook(other.gql, receiver.url(d))
    # when
    published = await publish(account.gql)
    # then
    assert len(published["event"]["deliveries"]) == 2
    await receiver.wait_for(a, 1)
    await receiver.wait_for(b, 1)
    # and the others got nothing: later events to them arrive, and each is the only thing they received
    await publish(account.gql, event="OFFER_SENT")
    await publish(other.gql)
    (offer,) = await receiver.wait_for(c, 1)
    (others,) = await receiver.wait_for(d, 1)
    assert offer.json()["event"] == "offer_sent"
    assert others.headers["X-Webhook-Delivery"] not in {x["id"] for x in published["event"]["deliveries"]}


async def test_a_cookie_set_by_one_endpoint_never_goes_out_with_a_later_delivery(
    stack: Stack, receiver: Receiver
) -> None:
    # given two accounts' webhooks on one receiver host (by name: cookies are kept for host names), and the
    # first endpoint answers with a session cookie
    account, other = await stack.account(), await stack.account()
    setter, later = path(), path()

    async def sets_a_cookie(request: web.Request, n: int) -> web.StreamResponse:
        response = web.Response(text="OK")
        response.set_cookie("session", "of-the-first-account")
        return response

    by_name = receiver.url(setter, sets_a_cookie).replace("127.0.0.1", "localhost")
    await create_webhook(account.gql, by_name)
    await create_webhook(other.gql, receiver.url(later).replace("127.0.0.1", "localhost"))
    # when the first endpoint gets a delivery (and sets its cookie), then both get one more
    await publish(account.gql)
    await receiver.wait_for(setter, 1)
    await publish(account.gql)
    await publish(other.gql)
    # then no delivery carried a cookie: not the first endpoint's next one, nor the other account's
    received = await receiver.wait_for(setter, 2) + await receiver.wait_for(later, 1)
    assert [r.headers.get("Cookie") for r in received] == [None, None, None]


async def test_bad_input_is_refused_and_nothing_is_stored_or_sent(stack: Stack, receiver: Receiver) -> None:
    account = await stack.account()
    p = path()
    await create_webhook(account.gql, receiver.url(p))
    bad = publish_input()
    bad["log"]["resourceId"] = "nope"
    bad["log"]["userEmail"] = ""
    bad["details"] = {"big": 2**60}
    payload = (await account.gql.execute(PUBLISH, {"input": bad}))["publishEvent"]
    assert payload["event"] is None
    fields = {e["field"]: e["code"] for e in payload["errors"]}
    assert fields["log.resourceId"] == "INVALID_ID"
    assert fields["log.userEmail"] == "REQUIRED"
    assert fields["details.big"] == "UNSAFE_NUMBER"
    too_big = publish_input(details={"blob": "x" * (300 * 1024)})
    payload = (await account.gql.execute(PUBLISH, {"input": too_big}))["publishEvent"]
    assert [e["code"] for e in payload["errors"]] == ["PAYLOAD_TOO_LARGE"]
    assert await raw_collections(stack.core).events.count_documents({"account_id": ObjectId(account.id)}) == 0
    # and nothing was sent: a valid event published afterwards is the first and only arrival
    probe = (await publish(account.gql))["event"]["deliveries"][0]["id"]
    (arrived,) = await receiver.wait_for(p, 1)
    assert arrived.headers["X-Webhook-Delivery"] == probe


async def test_the_same_idempotency_key_returns_the_first_event_and_delivers_nothing_new(
    stack: Stack, receiver: Receiver
) -> None:
    account = await stack.account()
    p = path()
    await create_webhook(account.gql, receiver.url(p))
    first = await publish(account.gql, idempotencyKey="order-42")
    again = await publish(account.gql, idempotencyKey="order-42")
    assert again["event"]["id"] == first["event"]["id"]
    assert again["event"]["replayed"] is True and first["event"]["replayed"] is False
    assert [d["id"] for d in again["event"]["deliveries"]] == [d["id"] for d in first["event"]["deliveries"]]
    # and a different key is a different event, and the receiver gets exactly one delivery per event
    other = await publish(account.gql, idempotencyKey="order-43")
    assert other["event"]["id"] != first["event"]["id"]
    arrived = await receiver.wait_for(p, 2)
    assert sorted(r.headers["X-Webhook-Delivery"] for r in arrived) == sorted(
        [first["event"]["deliveries"][0]["id"], other["event"]["deliveries"][0]["id"]]
    )


async def test_a_failing_receiver_gets_every_scheduled_attempt_then_the_delivery_fails(
    stack: Stack, receiver: Receiver
) -> None:
    account = await stack.account()
    p = path()
    await create_webhook(account.gql, receiver.url(p, status(500)))
    published = await publish(account.gql)
    delivery_id = published["event"]["deliveries"][0]["id"]
    done = await wait_for_status(account.gql, delivery_id, "FAILED")
    got = await receiver.wait_for(p, len(SCHEDULE))
    assert len(got) == len(SCHEDULE)
    assert [a["number"] for a in done["attempts"]] == [1, 2, 3]
    assert [a["deliveryStatus"] for a in done["attempts"]] == ["PENDING", "PENDING", "FAILED"]
    assert all(a["statusCode"] == 500 and a["errorClass"] == "http_status" for a in done["attempts"])
    # the same bytes, the same delivery id, each attempt with its own timestamp
    assert len({r.body for r in got}) == 1
    assert len({r.headers["webhook-id"] for r in got}) == 1
    # and no retry came before its time on the schedule (how late one may be is a benchmark figure)
    gaps = [b.at - a.at for a, b in itertools.pairwise(got)]
    for gap, expected in zip(gaps, SCHEDULE[1:], strict=True):
        assert gap >= expected - 0.02, gaps


async def test_a_flapping_receiver_succeeds_on_a_retry(stack: Stack, receiver: Receiver) -> None:
    account = await stack.account()
    p = path()
    await create_webhook(account.gql, receiver.url(p, sequence(status(503), status(502))))
    receiver.behaviours[p] = sequence(status(503), status(200))
    published = await publish(account.gql)
    done = await wait_for_status(account.gql, published["event"]["deliveries"][0]["id"], "SUCCEEDED")
    assert [(a["statusCode"], a["deliveryStatus"]) for a in done["attempts"]] == [
        (503, "PENDING"),
        (200, "SUCCEEDED"),
    ]


@pytest.mark.parametrize("code", [301, 302, 307, 308])
async def test_redirects_are_failures_and_never_followed(stack: Stack, receiver: Receiver, code: int) -> None:
    account = await stack.account()
    p, target = path(), path()
    receiver.url(target)
    await create_webhook(account.gql, receiver.url(p, status(code, {"Location": receiver.base_url + target})))
    published = await publish(account.gql)
    done = await wait_for_status(account.gql, published["event"]["deliveries"][0]["id"], "FAILED")
    assert all(a["errorClass"] == "redirect" and a["statusCode"] == code for a in done["attempts"])
    assert receiver.received[target] == []


async def test_a_refused_connection_is_a_failed_attempt(stack: Stack) -> None:
    from webhooks_cli.embedded import free_port

    account = await stack.account()
    await create_webhook(account.gql, f"http://127.0.0.1:{free_port()}/nobody-listens")
    published = await publish(account.gql)
    done = await wait_for_status(account.gql, published["event"]["deliveries"][0]["id"], "FAILED")
    assert all(a["errorClass"] == "connection_error" and a["statusCode"] is None for a in done["attempts"])


async def test_retry_after_lengthens_the_wait_up_to_the_cap(stack: Stack, receiver: Receiver) -> None:
    account = await stack.account()
    p = path()
    await create_webhook(
        account.gql, receiver.url(p, sequence(status(429, {"Retry-After": "1"}), status(200)))
    )
    published = await publish(account.gql)
    await wait_for_status(account.gql, published["event"]["deliveries"][0]["id"], "SUCCEEDED")
    first, second = receiver.received[p]
    assert second.at - first.at >= 0.95  # the receiver's 1 s, not the schedule's 0.2 s


def seconds_between(earlier: str, later: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


async def test_retry_after_counts_even_when_the_answer_has_more_headers_than_the_log_keeps(
    stack: Stack, receiver: Receiver
) -> None:
    # given a receiver that answers 503 with 60 headers of its own before its Retry-After of 3 s (the
    # delivery log keeps the first 50 response headers only), then 200
    account = await stack.account()
    p = path()
    crowded = {f"X-Receiver-{i:02}": "v" for i in range(60)} | {"Retry-After": "3"}
    await create_webhook(account.gql, receiver.url(p, sequence(status(503, crowded), status(200))))
    # when an event is published
    published = await publish(account.gql)
    done = await wait_for_status(account.gql, published["event"]["deliveries"][0]["id"], "SUCCEEDED")
    # then the first attempt's log leaves Retry-After out, and its retry was still planned 3 s later, not
    # after the schedule's 0.2 s
    first = done["attempts"][0]
    assert (first["statusCode"], "Retry-After" in first["responseHeaders"]) == (503, False)
    assert seconds_between(first["startedAt"], first["nextAttemptAt"]) >= 3


async def test_retry_after_as_an_http_date_lengthens_the_wait_too(stack: Stack, receiver: Receiver) -> None:
    # given a receiver that answers 429 with Retry-After in its other form, a date 5 s after its answer (RFC
    # 9110: an IMF-fixdate, whole seconds), then 200
    async def busy_until(request: web.Request, n: int) -> web.StreamResponse:
        until = email.utils.formatdate(time.time() + 5, usegmt=True)
        return web.Response(status=429, text="busy", headers={"Retry-After": until})

    account = await stack.account()
    p = path()
    await create_webhook(account.gql, receiver.url(p, sequence(busy_until, status(200))))
    # when an event is published
    published = await publish(account.gql)
    done = await wait_for_status(account.gql, published["event"]["deliveries"][0]["id"], "SUCCEEDED")
    # then the retry was planned for that date (at least 4 s after the attempt started: the date drops the
    # fraction of its second), not after the schedule's 0.2 s
    first = done["attempts"][0]
    assert first["statusCode"] == 429
    assert seconds_between(first["startedAt"], first["nextAttemptAt"]) >= 3.9


async def test_a_retry_after_date_beyond_any_calendar_is_ignored_not_fatal(
    stack: Stack, receiver: Receiver
) -> None:
    # given a receiver that answers 503 with a Retry-After date whose year no calendar holds, then 200
    account = await stack.account()
    p = path()
    absurd = {"Retry-After": "Sun, 06 Nov 99999999999999999999 08:49:37 GMT"}
    await create_webhook(account.gql, receiver.url(p, sequence(status(503, absurd), status(200))))
    # when an event is published
    published = await publish(account.gql)
    # then the 503 is recorded and retried on the schedule (the date unreadable, as any other), and the
    # retry succeeds: the header cannot stop the attempt's record (nor its batch's)
    done = await wait_for_status(account.gql, published["event"]["deliveries"][0]["id"], "SUCCEEDED")
    assert [a["statusCode"] for a in done["attempts"]] == [503, 200]


async def test_the_response_is_recorded_with_at_most_4_kib_of_body(stack: Stack, receiver: Receiver) -> None:
    from aiohttp import web

    async def big(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(text="é" * 10_000, headers={"X-Receiver": "yes"})

    account = await stack.account()
    p = path()
    await create_webhook(account.gql, receiver.url(p, big))
    published = await publish(account.gql)
    done = await wait_for_status(account.gql, published["event"]["deliveries"][0]["id"], "SUCCEEDED")
    attempt = done["attempts"][0]
    assert len(attempt["responseBody"].encode("utf-8")) <= 4096
    assert attempt["responseBody"].startswith("éé")
    assert attempt["responseHeaders"]["X-Receiver"] == "yes"


@contextlib.asynccontextmanager
async def cut_short(answer: bytes) -> AsyncIterator[str]:
    """A raw HTTP receiver that reads each request whole, writes ``answer`` (a status line and headers
    announcing more body than follows) and closes the connection; yields its URL."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_http_message(reader)
        writer.write(answer)
        await writer.drain()
        writer.close()

    port = free_port()
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    try:
        yield f"http://127.0.0.1:{port}/cut-short"
    finally:
        server.close()


@pytest.mark.parametrize(
    "framing",
    [b"Content-Length: 100\r\n\r\nAccepted", b"Transfer-Encoding: chunked\r\n\r\n8\r\nAccepted\r\n"],
    ids=["content-length", "chunked"],
)
async def test_a_2xx_whose_body_is_cut_short_is_a_success_with_its_status_recorded(
    stack: Stack, framing: bytes
) -> None:
    # given a receiver that answers 202 but closes the connection before the body it announced is complete
    # (as a process that dies after answering does)
    account = await stack.account()
    async with cut_short(b"HTTP/1.1 202 Accepted\r\n" + framing) as url:
        await create_webhook(account.gql, url)
        # when an event is published
        published = await publish(account.gql)
        done = await wait_for_status(
            account.gql, published["event"]["deliveries"][0]["id"], "SUCCEEDED", "FAILED"
        )
    # then the receiver's 2xx counts: the delivery succeeded on its one attempt, which records the status
    # (a body cut after 4 KiB was already a success: the rest is never read)
    assert done["status"] == "SUCCEEDED", done["attempts"]
    (attempt,) = done["attempts"]
    assert (attempt["statusCode"], attempt["errorClass"]) == (202, None)


async def test_a_5xx_whose_body_is_cut_short_is_recorded_as_that_status(stack: Stack) -> None:
    # given a receiver that answers 500 and closes the connection before the body it announced is complete
    account = await stack.account()
    async with cut_short(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 100\r\n\r\nBoom") as url:
        await create_webhook(account.gql, url)
        # when an event is published
        published = await publish(account.gql)
        done = await wait_for_status(account.gql, published["event"]["deliveries"][0]["id"], "FAILED")
    # then every attempt failed with the receiver's status, not as if it had never answered
    assert [(a["statusCode"], a["errorClass"]) for a in done["attempts"]] == [(500, "http_status")] * len(
        SCHEDULE
    )


async def test_the_response_headers_are_recorded_within_bounds(stack: Stack, receiver: Receiver) -> None:
    from aiohttp import web

    async def bloated(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(text="OK", headers={f"X-H{i:02d}": "v" * 8000 for i in range(50)})

    # given a receiver that answers with 50 headers of 8,000 characters each (400 KB)
    account = await stack.account()
    p = path()
    await create_webhook(account.gql, receiver.url(p, bloated))
    # when an event is delivered
    published = await publish(account.gql)
    done = await wait_for_status(account.gql, published["event"]["deliveries"][0]["id"], "SUCCEEDED")
    # then its attempt records the first headers, each cut to 1 KiB, 8 KiB in all
    recorded = done["attempts"][0]["responseHeaders"]
    assert recorded["X-H00"] == "v" * 1024
    assert all(len(value) <= 1024 for value in recorded.values())
    assert sum(len(k) + len(v) for k, v in recorded.items()) <= 8192


async def test_header_names_with_dollars_and_dots_are_recorded_as_sent(
    stack: Stack, receiver: Receiver
) -> None:
    # given a receiver whose answers carry header names that are valid HTTP tokens but special to MongoDB,
    # first with a 503 (so the second attempt is appended to the stored delivery), then with a 200
    odd = {"$version": "2", "X.Trace": "abc", "Plain": "yes"}
    account = await stack.account()
    p = path()
    await create_webhook(account.gql, receiver.url(p, sequence(status(503, odd), status(200, odd))))
    # when an event is delivered
    published = await publish(account.gql)
    delivery_id = published["event"]["deliveries"][0]["id"]
    done = await wait_for_status(account.gql, delivery_id, "SUCCEEDED")
    # then both attempts are in the log, with the headers as the receiver sent them
    assert [a["statusCode"] for a in done["attempts"]] == [503, 200]
    for attempt in done["attempts"]:
        assert {k: v for k, v in attempt["responseHeaders"].items() if k in odd} == odd
    # and no stored field name starts with "$" or holds a "."
    stored = await raw_collections(stack.core).deliveries.find_one({"_id": ObjectId(delivery_id)})
    assert stored is not None
    names = [name for a in stored["attempts"] for name in a["response_headers"]]
    assert names and not [n for n in names if n.startswith("$") or "." in n]


async def test_delivery_log_filters_and_paginates_newest_first(stack: Stack, receiver: Receiver) -> None:
    account = await stack.account()
    good, bad = path(), path()
    good_id, _ = await create_webhook(account.gql, receiver.url(good), ["JOB_CREATED", "JOB_CLOSED"])
    bad_id, _ = await create_webhook(account.gql, receiver.url(bad, status(500)), ["JOB_CREATED"])
    ids = []
    for event in ("JOB_CREATED", "JOB_CLOSED", "JOB_CREATED"):
        ids.append([d["id"] for d in (await publish(account.gql, event=event))["event"]["deliveries"]])
    for group in ids:
        for delivery_id in group:
            await wait_for_status(account.gql, delivery_id, "SUCCEEDED", "FAILED")
    query = """query($w: ID, $s: DeliveryStatus, $e: String, $first: Int, $after: String) {
      deliveries(webhookId: $w, status: $s, event: $e, first: $first, after: $after) {
        edges { node { id webhookId event status } } pageInfo { hasNextPage endCursor } } }"""

    async def listed(**variables: Any) -> list[dict[str, Any]]:
        nodes: list[dict[str, Any]] = []
        after = None
        while True:
            page = (await account.gql.execute(query, {**variables, "first": 2, "after": after}))["deliveries"]
            nodes += [e["node"] for e in page["edges"]]
            if not page["pageInfo"]["hasNextPage"]:
                return nodes
            after = page["pageInfo"]["endCursor"]

    everything = await listed()
    assert [n["id"] for n in everything] == sorted((i for g in ids for i in g), reverse=True)
    assert {n["webhookId"] for n in await listed(w=good_id)} == {good_id}
    assert len(await listed(w=good_id)) == 3
    assert {n["status"] for n in await listed(s="FAILED")} == {"FAILED"}
    assert len(await listed(w=bad_id, s="FAILED")) == 2
    assert {n["event"] for n in await listed(e="job_closed")} == {"job_closed"}


async def test_the_delivery_log_of_another_account_is_invisible(stack: Stack, receiver: Receiver) -> None:
    account, other = await stack.account(), await stack.account()
    await create_webhook(account.gql, receiver.url(path()))
    published = await publish(account.gql)
    delivery_id = published["event"]["deliveries"][0]["id"]
    assert await delivery(other.gql, delivery_id) is None
    assert await delivery(other.gql, str(ObjectId())) is None
    listed = await other.gql.execute("{ deliveries { edges { node { id } } } }")
    assert listed["deliveries"]["edges"] == []


async def test_publishing_needs_the_publish_scope(stack: Stack) -> None:
    from webhooks.models import Scope

    manager = await stack.account(frozenset({Scope.MANAGE_WEBHOOKS}))
    body = await manager.gql.raw(PUBLISH, {"input": publish_input()})
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
