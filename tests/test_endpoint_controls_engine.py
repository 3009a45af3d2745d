"""Endpoint controls that the delivery engine carries out: custom headers on the wire, per-resource
ordering with ``X-Webhook-Sequence``, and operational events.

Everything through real parts: the GraphQL API, a real worker (lanes in Redis, MongoDB) and loopback
receivers.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from jsonschema import Draft202012Validator
from redis.asyncio import Redis

from tests.conftest import make_settings
from tests.delivery_support import PUBLISH, audit_log, publish_input, wait_for_attempt_count, wait_for_status
from tests.receiver import Receiver, ok, status
from tests.support import Stack, require_tool, run_stack

CREATE = """
mutation($input: CreateWebhookInput!) {
  createWebhook(input: $input) { webhook { id } secret errors { field code message } }
}"""
STATUS = "query($id: ID!) { webhook(id: $id) { enabled disabledReason } }"


@pytest.fixture(scope="module")
async def stack(mongodb_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    settings = make_settings(
        mongodb_url, tmp_path_factory.mktemp("controls-engine"), retry_schedule=(0.0, 0.1)
    )
    async with run_stack(settings) as running:
        yield running


def path() -> str:
    return f"/engine/{uuid.uuid4().hex[:8]}"


async def create(stack_account: object, url: str, **extra: object) -> str:
    from tests.support import Account

    assert isinstance(stack_account, Account)
    events = extra.pop("events", ["JOB_APPLICATION_CREATED"])
    payload = await stack_account.gql.execute(
        CREATE, {"input": {"name": "Hook", "url": url, "events": events, **extra}}
    )
    assert payload["createWebhook"]["errors"] == []
    webhook_id: str = payload["createWebhook"]["webhook"]["id"]
    return webhook_id


async def test_custom_headers_reach_the_receiver_and_are_redacted_in_the_log(
    stack: Stack, receiver: Receiver
) -> None:
    # given a webhook with a custom Authorization header
    account = await stack.account()
    p = path()
    await create(account, receiver.url(p), headers=[{"name": "Authorization", "value": "Bearer rcv-secret"}])
    # when an event is published
    published = (await account.gql.execute(PUBLISH, {"input": publish_input()}))["publishEvent"]
    (delivery,) = published["event"]["deliveries"]
    # then the receiver gets the header, and the delivery log shows it redacted
    (got,) = await receiver.wait_for(p, 1)
    done = await wait_for_status(account.gql, delivery["id"], "SUCCEEDED")
    assert got.headers.get("Authorization") == "Bearer rcv-secret"
    (attempt,) = done["attempts"]
    assert attempt["requestHeaders"]["Authorization"] == "[redacted]"
    assert "rcv-secret" not in str(done)


async def test_per_resource_ordering_keeps_publish_order_and_numbers_without_gaps(
    stack: Stack, receiver: Receiver
) -> None:
    # given a PER_RESOURCE webhook whose receiver fails the first attempt of every third request
    account = await stack.account()
    p = path()
    seen: set[str] = set()
    count = 0

    async def flaky(request: web.Request, n: int) -> web.StreamResponse:
        nonlocal count
        delivery = request.headers.get("X-Webhook-Delivery", "")
        count += 1
        if count % 3 == 0 and delivery not in seen:
            seen.add(delivery)
            return await status(500)(request, n)
        return await ok(request, n)

    await create(account, receiver.url(p, flaky), ordering="PER_RESOURCE")
    # when 3 resources × 20 events are published, interleaved
    resources = [f"{i:024x}" for i in (1, 2, 3)]
    for n in range(20):
        for r in resources:
            log = audit_log(resourceId=r)
            details = {"method": "PATCH", "path": "/x", "n": n}
            await account.gql.execute(PUBLISH, {"input": publish_input(log=log, details=details)})
    # then every resource's events arrive (successfully) in publish order, numbered 1..20 without gaps
    async with asyncio.timeout(60):
        while True:
            succeeded = {g.headers.get("X-Webhook-Delivery") for g in receiver.received[p]} - seen
            if len(succeeded) + len(seen) >= 60 and len(receiver.received[p]) >= 60 + len(seen):
                break
            await asyncio.sleep(0.1)
    order: dict[str, list[int]] = defaultdict(list)
    sequences: dict[str, list[int]] = defaultdict(list)
    for request in receiver.received[p]:
        body = request.json()
        resource = body["data"]["log"]["resourceId"]  # type: ignore[index]
        number = body["data"]["details"]["n"]  # type: ignore[index]
        if not order[resource] or order[resource][-1] != number:
            order[resource].append(number)
            sequences[resource].append(int(request.headers["X-Webhook-Sequence"]))
    for r in resources:
        assert order[r] == list(range(20))
        assert sequences[r] == list(range(1, 21))


async def test_concurrent_first_publishes_of_a_resource_are_all_accepted_and_numbered_without_gaps(
    stack: Stack, receiver: Receiver
) -> None:
    # given a PER_RESOURCE webhook
    account = await stack.account()
    p = path()
    await create(account, receiver.url(p), ordering="PER_RESOURCE")
    # when, for each of 10 resources never published before, 4 events are published at once
    resources = [f"{0xF00 + r:024x}" for r in range(10)]
    answers = []
    for resource in resources:
        log = audit_log(resourceId=resource)
        answers += await asyncio.gather(
            *(account.gql.raw(PUBLISH, {"input": publish_input(log=log)}) for _ in range(4))
        )
    # then every publish is accepted, and each resource's deliveries are numbered 1 to 4
    assert [a for a in answers if a.get("errors") or a["data"]["publishEvent"]["errors"]] == []
    await receiver.wait_for(p, 40, timeout=60)
    numbers: dict[str, list[int]] = defaultdict(list)
    for request in receiver.received[p]:
        resource = request.json()["data"]["log"]["resourceId"]  # type: ignore[index]
        numbers[resource].append(int(request.headers["X-Webhook-Sequence"]))
    assert {r: sorted(n) for r, n in numbers.items()} == {r: [1, 2, 3, 4] for r in resources}


async def test_a_failing_webhook_is_announced_to_another_webhook_of_the_account(
    stack: Stack, receiver: Receiver
) -> None:
    # given a webhook that always fails, and an operations webhook subscribed to the operational events
    account = await stack.account()
    failing, ops = path(), path()
    failing_id = await create(
        account,
        receiver.url(failing, status(500)),
        events=["JOB_APPLICATION_CREATED", "WEBHOOK_FAILING", "WEBHOOK_DISABLED"],
    )
    await create(
        account,
        receiver.url(ops),
        events=["WEBHOOK_FAILING", "WEBHOOK_DISABLED", "DELIVERY_EXHAUSTED"],
    )
    # when 10 deliveries to it fail finally (the disable threshold)
    for _ in range(10):
        published = (await account.gql.execute(PUBLISH, {"input": publish_input()}))["publishEvent"]
        (delivery,) = [d for d in published["event"]["deliveries"] if d["webhookId"] == failing_id]
        await wait_for_status(account.gql, delivery["id"], "FAILED")
    # then the ops webhook hears failing at 5 and 8, then disabled, and the failing one hears nothing of it
    received = await receiver.wait_for(ops, 13, timeout=10)
    state = (await account.gql.execute(STATUS, {"id": failing_id}))["webhook"]
    assert state["enabled"] is False
    by_event: dict[str, list[dict[str, object]]] = defaultdict(list)
    for request in received:
        body = request.json()
        by_event[str(body["event"])].append(body["data"])  # type: ignore[arg-type]
    assert [d["consecutiveFailures"] for d in by_event["webhook.failing"]] == [5, 8]
    (disabled,) = by_event["webhook.disabled"]
    assert disabled["webhookId"] == failing_id and disabled["reason"]
    assert len(by_event["delivery.exhausted"]) == 10
    assert all(r.json()["event"] == "job_application_created" for r in receiver.received[failing])


RETRY = "mutation($id: ID!) { retryDelivery(id: $id) { delivery { id } errors { code message } } }"
OPS_LOG = "query($w: ID!) { deliveries(webhookId: $w) { edges { node { id event } } } }"


async def test_delivery_recovered_is_sent_for_a_failed_delivery_retried_not_for_a_succeeded_one_resent(
    stack: Stack, receiver: Receiver
) -> None:
    # given a webhook whose endpoint failed one delivery and then answered another, and an operations
    # webhook subscribed to delivery.recovered
    account = await stack.account()
    endpoint, ops = path(), path()
    failing = {"now": True}

    async def switchable(request: web.Request, n: int) -> web.StreamResponse:
        return await (status(500) if failing["now"] else ok)(request, n)

    hook_id = await create(account, receiver.url(endpoint, switchable))
    ops_id = await create(account, receiver.url(ops), events=["DELIVERY_RECOVERED"])

    async def one_delivery(wanted: str) -> str:
        published = (await account.gql.execute(PUBLISH, {"input": publish_input()}))["publishEvent"]
        (delivery,) = [d for d in published["event"]["deliveries"] if d["webhookId"] == hook_id]
        await wait_for_status(account.gql, delivery["id"], wanted)
        return str(delivery["id"])

    failed = await one_delivery("FAILED")
    failing["now"] = False
    succeeded = await one_delivery("SUCCEEDED")
    # when the succeeded one is sent again by hand, and then the failed one is retried by hand
    for delivery_id in (succeeded, failed):
        assert (await account.gql.execute(RETRY, {"id": delivery_id}))["retryDelivery"]["errors"] == []
        await wait_for_attempt_count(account.gql, delivery_id, 2 if delivery_id == succeeded else 3)
    # then the operations webhook hears that the failed one recovered, and nothing about the one resent
    (notice,) = await receiver.wait_for(ops, 1, timeout=20)
    assert notice.json()["data"]["deliveryId"] == failed  # type: ignore[index]
    told = (await account.gql.execute(OPS_LOG, {"w": ops_id}))["deliveries"]["edges"]
    assert [e["node"]["event"] for e in told] == ["delivery.recovered"]


async def test_the_sweeper_rebuilds_ordering_gates_after_redis_loses_them(
    mongodb_url: str, tmp_path: Path, receiver: Receiver, redis_client: Redis
) -> None:
    # given a PER_RESOURCE webhook whose receiver fails the first attempt of every delivery (retried 2 s
    # later), with 2 resources × 4 events published, so each resource has one delivery waiting to be
    # retried and three waiting for their turn
    settings = make_settings(
        mongodb_url, tmp_path, retry_schedule=(0.0, 2.0), sweep_interval=1.0, sweep_grace=0.5
    )
    async with run_stack(settings) as stack:
        account = await stack.account()
        p = path()
        tries: Counter[str] = Counter()

        async def fails_first(request: web.Request, n: int) -> web.StreamResponse:
            tries[request.headers["X-Webhook-Delivery"]] += 1
            return await (status(500) if tries[request.headers["X-Webhook-Delivery"]] == 1 else ok)(
                request, n
            )

        await create(account, receiver.url(p, fails_first), ordering="PER_RESOURCE")
        resources = [f"{i:024x}" for i in (7, 8)]
        ids: list[str] = []
        for n in range(4):
            for r in resources:
                details = {"method": "PATCH", "path": "/x", "n": n}
                got = await account.gql.execute(
                    PUBLISH, {"input": publish_input(log=audit_log(resourceId=r), details=details)}
                )
                ids.append(got["publishEvent"]["event"]["deliveries"][0]["id"])
        heads = ids[:2]
        for head in heads:  # their first attempts (failed) are recorded
            await wait_for_attempt_count(account.gql, head, 1)
        # when Redis loses everything the service keeps there (lanes, gates, retries)
        keys = [k async for k in redis_client.scan_iter(match=f"{settings.queue_name}:*", count=1000)]
        if keys:
            await redis_client.delete(*keys)
        # then the sweeper rebuilds the gates from MongoDB: every delivery succeeds, one at a time per
        # resource, in publish order, numbered 1..4
        done = [await wait_for_status(account.gql, i, "SUCCEEDED", timeout=60) for i in ids]
    assert all(d["status"] == "SUCCEEDED" for d in done)
    order: dict[str, list[int]] = defaultdict(list)
    sequences: dict[str, list[int]] = defaultdict(list)
    for request in receiver.received[p]:
        body = request.json()
        resource = body["data"]["log"]["resourceId"]  # type: ignore[index]
        number = body["data"]["details"]["n"]  # type: ignore[index]
        if not order[resource] or order[resource][-1] != number:
            order[resource].append(number)
            sequences[resource].append(int(request.headers["X-Webhook-Sequence"]))
    for r in resources:
        assert order[r] == [0, 1, 2, 3]
        assert sequences[r] == [1, 2, 3, 4]


async def test_a_user_disable_is_announced_to_another_webhook_of_the_account(
    stack: Stack, receiver: Receiver
) -> None:
    # given two webhooks, one of them subscribed to webhook.disabled
    account = await stack.account()
    ops = path()
    other_id = await create(account, receiver.url(path()), events=["JOB_APPLICATION_CREATED"])
    await create(account, receiver.url(ops), events=["WEBHOOK_DISABLED"])
    # when a user disables the other one
    update = """
    mutation($id: ID!, $input: UpdateWebhookInput!) {
      updateWebhook(id: $id, input: $input) { errors { code } }
    }"""
    result = await account.gql.execute(update, {"id": other_id, "input": {"enabled": False}})
    assert result["updateWebhook"]["errors"] == []
    # then the ops webhook hears it, with the reason
    (got,) = await receiver.wait_for(ops, 1)
    body = got.json()
    assert body["event"] == "webhook.disabled"
    assert body["data"]["webhookId"] == other_id  # type: ignore[index]
    assert body["data"]["reason"] == "Disabled by a user"  # type: ignore[index]


# JSON Schema's `pattern` is an ECMA-262 regular expression: read as a JavaScript validator (ajv) reads it.
ECMA_PATTERNS = """
const checks = JSON.parse(require('fs').readFileSync(0, 'utf8'));
console.log(JSON.stringify(checks.map(([pattern, value]) => new RegExp(pattern, 'u').test(value))));
"""


async def test_a_delivered_log_satisfies_its_catalog_schema_as_a_javascript_validator_reads_it(
    stack: Stack, receiver: Receiver
) -> None:
    # given the catalog's schema of job_application_created and a webhook subscribed to it
    account = await stack.account()
    types = (await account.gql.execute("{ eventTypes { name schema } }"))["eventTypes"]
    schema = next(t["schema"] for t in types if t["name"] == "job_application_created")
    p = path()
    await create(account, receiver.url(p))
    # when an event is published whose log texts begin or end with U+FEFF (a byte-order mark, as text
    # pasted from a file may carry; publishEvent accepts it: it is not whitespace to Python)
    log = audit_log(userName="\ufeffJohn Doe", userEmail="john@example.com\ufeff")
    published = (await account.gql.execute(PUBLISH, {"input": publish_input(log=log)}))["publishEvent"]
    assert published["errors"] == []
    # then the body the receiver gets satisfies the schema, its patterns read as ECMAScript reads them
    (got,) = await receiver.wait_for(p, 1)
    body = got.json()
    Draft202012Validator(schema).validate(body)
    log_schema = schema["properties"]["data"]["properties"]["log"]["properties"]
    sent = body["data"]["log"]  # type: ignore[index]
    names = [name for name, rule in log_schema.items() if "pattern" in rule]
    checks = [(log_schema[name]["pattern"], sent[name]) for name in names]
    node = require_tool("node", hint="apt-get install nodejs")
    proc = await asyncio.create_subprocess_exec(
        node, "-e", ECMA_PATTERNS, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate(json.dumps(checks).encode())
    assert proc.returncode == 0
    refused = [name for name, ok in zip(names, json.loads(out), strict=True) if not ok]
    assert refused == []
