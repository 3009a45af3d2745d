"""Test deliveries, auto-disable, held deliveries, manual retry and recovery, and the spec's Node receiver."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from standardwebhooks import Webhook as StandardWebhook

from tests.conftest import make_settings
from tests.delivery_support import (
    create_webhook,
    delivery,
    poll,
    publish,
    until_disabled,
    wait_for_status,
    webhook_status,
)
from tests.receiver import Receiver, sleep, status
from tests.support import Account, GraphQLClient, Stack, require_tool, run_stack
from webhooks.db import raw_collections
from webhooks_cli.embedded import free_port, spawn, stop, wait_for_port

SCHEDULE = 0.0, 0.1
SPEC_RECEIVER = Path(__file__).with_name("spec_receiver.js")

TEST_WEBHOOK = """
mutation($id: ID!) {
  testWebhook(id: $id) { delivery { id webhookId event status attemptCount } errors { field code message } }
}"""

RETRY = """
mutation($id: ID!) {
  retryDelivery(id: $id) { delivery { id status attemptCount } errors { field code message } }
}"""

RECOVER = """
mutation($webhookId: ID!, $since: DateTime!, $until: DateTime, $dryRun: Boolean!) {
  recoverDeliveries(webhookId: $webhookId, since: $since, until: $until, dryRun: $dryRun) {
    count dryRun hasMore errors { field code message }
  }
}"""

UPDATE = """
mutation($id: ID!, $input: UpdateWebhookInput!) {
  updateWebhook(id: $id, input: $input) { webhook { id enabled } errors { field code message } }
}"""


@pytest.fixture(scope="module")
async def stack(mongodb_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    settings = make_settings(
        mongodb_url,
        tmp_path_factory.mktemp("recovery"),
        retry_schedule=SCHEDULE,
    )
    async with run_stack(settings) as running:
        yield running


def path() -> str:
    return f"/hook/{uuid.uuid4().hex[:8]}"


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def set_enabled(gql: GraphQLClient, webhook_id: str, enabled: bool) -> None:
    payload = (await gql.execute(UPDATE, {"id": webhook_id, "input": {"enabled": enabled}}))["updateWebhook"]
    assert payload["errors"] == [] and payload["webhook"]["enabled"] is enabled


async def publish_many(gql: GraphQLClient, count: int) -> list[str]:
    published = await asyncio.gather(*(publish(gql) for _ in range(count)))
    return [p["event"]["deliveries"][0]["id"] for p in published]


async def all_final(gql: GraphQLClient, ids: list[str], *statuses: str) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(wait_for_status(gql, i, *statuses) for i in ids)))


# -- testWebhook -------------------------------------------------------------------------------------


async def test_test_webhook_sends_the_spec_test_payload_once_signed(stack: Stack, receiver: Receiver) -> None:
    # given a webhook
    account = await stack.account()
    p = path()
    webhook_id, secret = await create_webhook(account.gql, receiver.url(p), name="My Webhook")
    # when the user tests it
    payload = (await account.gql.execute(TEST_WEBHOOK, {"id": webhook_id}))["testWebhook"]
    # then the delivery is returned at once, still pending
    assert payload["errors"] == []
    created = payload["delivery"]
    assert (created["webhookId"], created["event"], created["status"], created["attemptCount"]) == (
        webhook_id,
        "webhook.test",
        "PENDING",
        0,
    )
    # and the receiver gets the spec's webhook.test payload, signed both ways
    (got,) = await receiver.wait_for(p, 1)
    body = got.json()
    assert list(body) == ["event", "timestamp", "data"]
    assert body["event"] == "webhook.test"
    assert isinstance(body["timestamp"], str) and body["timestamp"].endswith("Z")
    assert body["data"] == {
        "message": "This is a test webhook",
        "webhookId": webhook_id,
        "webhookName": "My Webhook",
    }
    assert list(body["data"]) == ["message", "webhookId", "webhookName"]
    assert got.spec_signature_valid(secret)
    StandardWebhook(secret).verify(got.body, got.headers)
    assert got.headers["X-Webhook-Event"] == "webhook.test"
    assert got.headers["X-Webhook-Delivery"] == created["id"]
    done = await wait_for_status(account.gql, created["id"], "SUCCEEDED")
    (attempt,) = done["attempts"]
    assert (attempt["number"], attempt["trigger"], attempt["statusCode"]) == (1, "TEST", 200)


async def test_tests_reach_a_disabled_webhook_are_never_retried_and_never_disable(
    stack: Stack, receiver: Receiver
) -> None:
    # given a disabled webhook and an enabled one whose receiver always fails
    account = await stack.account()
    off, failing = path(), path()
    off_id, _ = await create_webhook(account.gql, receiver.url(off))
    await set_enabled(account.gql, off_id, False)
    failing_id, _ = await create_webhook(account.gql, receiver.url(failing, status(500)))
    # when both are tested, the failing one 10 times
    off_test = (await account.gql.execute(TEST_WEBHOOK, {"id": off_id}))["testWebhook"]["delivery"]
    tests = await asyncio.gather(*(account.gql.execute(TEST_WEBHOOK, {"id": failing_id}) for _ in range(10)))
    ids = [t["testWebhook"]["delivery"]["id"] for t in tests]
    # then the disabled webhook got its test
    done = await wait_for_status(account.gql, off_test["id"], "SUCCEEDED")
    assert [a["trigger"] for a in done["attempts"]] == ["TEST"]
    # and every failed test was tried exactly once
    for failed in await all_final(account.gql, ids, "FAILED"):
        made = [(a["number"], a["trigger"], a["statusCode"]) for a in failed["attempts"]]
        assert made == [(1, "TEST", 500)]
        assert failed["nextAttemptAt"] is None
    # (probe: an event published now fails, and its retry comes SCHEDULE[1] s later, after any retry of a
    # test would have come; when both of its attempts are in, every test has been received exactly once)
    published = (await publish(account.gql))["event"]["deliveries"]
    (probe,) = [d["id"] for d in published if d["webhookId"] == failing_id]
    arrived = await receiver.wait_for(failing, 12)
    assert sorted(r.headers["X-Webhook-Delivery"] for r in arrived) == sorted([*ids, probe, probe])
    # and ten failed tests do not disable the webhook
    found = await webhook_status(account.gql, failing_id)
    assert (found["enabled"], found["disabledReason"], found["disabledAt"]) == (True, None, None)
    # and a test of an unknown webhook is refused
    unknown = (await account.gql.execute(TEST_WEBHOOK, {"id": str(ObjectId())}))["testWebhook"]
    assert unknown["delivery"] is None and unknown["errors"][0]["code"] == "NOT_FOUND"


# -- auto-disable ------------------------------------------------------------------------------------


async def test_ten_consecutive_failures_disable_the_webhook_exactly_once_even_when_concurrent(
    stack: Stack, receiver: Receiver
) -> None:
    # given a webhook whose receiver always fails
    account = await stack.account()
    p = path()
    webhook_id, _ = await create_webhook(account.gql, receiver.url(p, status(500)))
    before = datetime.now(UTC)
    # when 15 events are published at once, so that their deliveries fail at about the same time
    ids = await publish_many(account.gql, 15)
    finals = await all_final(account.gql, ids, "FAILED", "HELD")
    # then the webhook is disabled, with the reason and the time recorded
    assert sum(1 for d in finals if d["status"] == "FAILED") >= 10
    found = await until_disabled(account.gql, webhook_id)
    assert "10 consecutive failed deliveries" in found["disabledReason"]
    disabled_at = datetime.fromisoformat(found["disabledAt"])
    assert before < disabled_at < datetime.now(UTC)
    # and events published while it is disabled are held
    seen = len(receiver.received[p])
    held = await publish(account.gql)
    # (held by the API, or by the worker if the API's webhook cache had not yet heard of the disable)
    await wait_for_status(account.gql, held["event"]["deliveries"][0]["id"], "HELD")
    # (probe: a test sent after that goes out to the disabled webhook, through the same worker)
    test = (await account.gql.execute(TEST_WEBHOOK, {"id": webhook_id}))["testWebhook"]["delivery"]
    await wait_for_status(account.gql, test["id"], "FAILED")
    # then the held event was not sent: the test is the only newcomer
    arrived = receiver.received[p][seen:]
    assert [r.headers["X-Webhook-Delivery"] for r in arrived] == [test["id"]]
    assert (await delivery(account.gql, held["event"]["deliveries"][0]["id"]))["attempts"] == []
    # and it was disabled once: nothing wrote the webhook after the disable, not even a late failure
    doc = await raw_collections(stack.core).webhooks.find_one({"_id": ObjectId(webhook_id)})
    assert doc is not None
    assert doc["disabled_at"] == doc["updated_at"]
    assert await webhook_status(account.gql, webhook_id) == found


async def test_any_success_resets_the_count_of_consecutive_failures(stack: Stack, receiver: Receiver) -> None:
    # given a webhook with 9 failed deliveries
    account = await stack.account()
    p = path()
    webhook_id, _ = await create_webhook(account.gql, receiver.url(p, status(500)))
    await all_final(account.gql, await publish_many(account.gql, 9), "FAILED")
    # when one delivery succeeds and 9 more fail
    receiver.behaviours[p] = status(200)
    await wait_for_status(account.gql, (await publish_many(account.gql, 1))[0], "SUCCEEDED")
    receiver.behaviours[p] = status(500)
    await all_final(account.gql, await publish_many(account.gql, 9), "FAILED")
    # then the webhook counts 9 failures in a row (counted just after they are recorded) and is still enabled
    webhooks = raw_collections(stack.core).webhooks
    await poll(
        lambda: webhooks.find_one({"_id": ObjectId(webhook_id)}),
        lambda doc: doc is not None and doc["consecutive_failures"] == 9,
    )
    found = await webhook_status(account.gql, webhook_id)
    assert (found["enabled"], found["disabledReason"]) == (True, None)
    # and the 10th failure in a row disables it
    await all_final(account.gql, await publish_many(account.gql, 1), "FAILED")
    assert (await until_disabled(account.gql, webhook_id))["enabled"] is False


# -- recovery ----------------------------------------------------------------------------------------


async def test_held_and_failed_deliveries_are_recovered_after_re_enabling(
    stack: Stack, receiver: Receiver
) -> None:
    # given a webhook with one failed delivery, then disabled, with two held deliveries
    account = await stack.account()
    p = path()
    webhook_id, _ = await create_webhook(account.gql, receiver.url(p, status(500)))
    since = datetime.now(UTC) - timedelta(seconds=1)
    (failed_id,) = await publish_many(account.gql, 1)
    await wait_for_status(account.gql, failed_id, "FAILED")
    await set_enabled(account.gql, webhook_id, False)
    held = await publish_many(account.gql, 2)
    assert [(await delivery(account.gql, i))["status"] for i in held] == ["HELD", "HELD"]
    assert len(receiver.received[p]) == len(SCHEDULE)
    # when the webhook is re-enabled and the receiver is fixed
    receiver.behaviours[p] = status(200)
    await set_enabled(account.gql, webhook_id, True)
    variables = {"webhookId": webhook_id, "since": iso(since), "until": None}
    # then a dry run counts what would be sent and sends nothing
    dry = (await account.gql.execute(RECOVER, {**variables, "dryRun": True}))["recoverDeliveries"]
    assert (dry["count"], dry["dryRun"], dry["errors"]) == (3, True, [])
    # (probe: a test sent after the dry run reaches the receiver, and is the only newcomer)
    seen = len(receiver.received[p])
    test = (await account.gql.execute(TEST_WEBHOOK, {"id": webhook_id}))["testWebhook"]["delivery"]
    await wait_for_status(account.gql, test["id"], "SUCCEEDED")
    assert [r.headers["X-Webhook-Delivery"] for r in receiver.received[p][seen:]] == [test["id"]]
    assert [(await delivery(account.gql, i))["status"] for i in held] == ["HELD", "HELD"]
    # and an empty window counts nothing
    empty = {**variables, "until": iso(since + timedelta(milliseconds=500)), "dryRun": True}
    assert (await account.gql.execute(RECOVER, empty))["recoverDeliveries"]["count"] == 0
    # and the real run re-sends all of them, as manual attempts
    real = (await account.gql.execute(RECOVER, {**variables, "dryRun": False}))["recoverDeliveries"]
    assert (real["count"], real["dryRun"], real["errors"]) == (3, False, [])
    recovered = await all_final(account.gql, [failed_id, *held], "SUCCEEDED")
    assert [(a["number"], a["trigger"]) for a in recovered[0]["attempts"]] == [
        (1, "AUTOMATIC"),
        (2, "AUTOMATIC"),
        (3, "MANUAL"),
    ]
    for one in recovered[1:]:
        assert [(a["number"], a["trigger"], a["statusCode"]) for a in one["attempts"]] == [(1, "MANUAL", 200)]
    # and a second recovery finds nothing left
    again = (await account.gql.execute(RECOVER, {**variables, "dryRun": False}))["recoverDeliveries"]
    assert again["count"] == 0


async def held_then_enabled(
    stack: Stack, receiver: Receiver, count: int
) -> tuple[Account, str, str, datetime, list[str]]:
    """An account whose webhook was disabled while ``count`` deliveries were published (all HELD), then
    enabled again: the account, the receiver path, the webhook id, a time before them, their ids."""
    account = await stack.account()
    p = path()
    webhook_id, _ = await create_webhook(account.gql, receiver.url(p))
    since = datetime.now(UTC) - timedelta(seconds=1)
    await set_enabled(account.gql, webhook_id, False)
    held = await publish_many(account.gql, count)
    await all_final(account.gql, held, "HELD")
    await set_enabled(account.gql, webhook_id, True)
    return account, p, webhook_id, since, held


async def test_a_recovery_of_more_deliveries_than_one_read_holds_restarts_every_one(
    stack: Stack, receiver: Receiver
) -> None:
    # given 60 deliveries held while their webhook was disabled (more than one chunk of the store's reads)
    account, p, webhook_id, since, held = await held_then_enabled(stack, receiver, 60)
    # when they are recovered
    variables = {"webhookId": webhook_id, "since": iso(since), "until": None, "dryRun": False}
    real = (await account.gql.execute(RECOVER, variables))["recoverDeliveries"]
    # then every one is counted, restarted and delivered once
    assert (real["count"], real["errors"]) == (60, [])
    await all_final(account.gql, held, "SUCCEEDED")
    assert sorted(r.headers["X-Webhook-Delivery"] for r in receiver.received[p]) == sorted(held)


async def test_a_recovery_larger_than_one_call_says_so_and_the_next_call_goes_on(
    stack: Stack, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given one call recovers at most 4 deliveries (scaled down from 10,000) and 6 are held
    monkeypatch.setattr("webhooks.services.deliveries.MAX_RECOVER", 4)
    account, p, webhook_id, since, held = await held_then_enabled(stack, receiver, 6)
    variables = {"webhookId": webhook_id, "since": iso(since), "until": None}
    # when the user asks what a recovery would send
    dry = (await account.gql.execute(RECOVER, {**variables, "dryRun": True}))["recoverDeliveries"]
    # then it counts one call's worth and says that more remain
    assert (dry["count"], dry["hasMore"], dry["errors"]) == (4, True, [])
    # and a recovery restarts those, and says more remain
    first = (await account.gql.execute(RECOVER, {**variables, "dryRun": False}))["recoverDeliveries"]
    assert (first["count"], first["hasMore"]) == (4, True)
    # and the next call restarts the rest and says nothing remains
    second = (await account.gql.execute(RECOVER, {**variables, "dryRun": False}))["recoverDeliveries"]
    assert (second["count"], second["hasMore"]) == (2, False)
    await all_final(account.gql, held, "SUCCEEDED")
    assert sorted(r.headers["X-Webhook-Delivery"] for r in receiver.received[p]) == sorted(held)


async def test_retry_delivery_makes_a_new_manual_attempt_of_a_failed_delivery(
    stack: Stack, receiver: Receiver
) -> None:
    # given a failed delivery
    account = await stack.account()
    p = path()
    await create_webhook(account.gql, receiver.url(p, status(500)))
    (delivery_id,) = await publish_many(account.gql, 1)
    await wait_for_status(account.gql, delivery_id, "FAILED")
    # when the receiver is fixed and the user retries it
    receiver.behaviours[p] = status(200)
    payload = (await account.gql.execute(RETRY, {"id": delivery_id}))["retryDelivery"]
    # then it is pending again at once, and succeeds with a manual attempt numbered after the others
    assert payload["errors"] == [] and payload["delivery"]["status"] == "PENDING"
    done = await wait_for_status(account.gql, delivery_id, "SUCCEEDED")
    assert [(a["number"], a["trigger"], a["statusCode"]) for a in done["attempts"]] == [
        (1, "AUTOMATIC", 500),
        (2, "AUTOMATIC", 500),
        (3, "MANUAL", 200),
    ]


async def test_retry_delivery_refuses_a_pending_delivery_and_hides_other_accounts(
    stack: Stack, receiver: Receiver
) -> None:
    # given a delivery still pending (its receiver is slow)
    account, other = await stack.account(), await stack.account()
    p = path()
    await create_webhook(account.gql, receiver.url(p, sleep(1.0)))
    (pending_id,) = await publish_many(account.gql, 1)
    await receiver.wait_for(p, 1)
    # when it is retried, then that is a conflict
    refused = (await account.gql.execute(RETRY, {"id": pending_id}))["retryDelivery"]
    assert refused["delivery"] is None
    assert [(e["field"], e["code"]) for e in refused["errors"]] == [("id", "CONFLICT")]
    # and another account retrying it gets exactly the answer for an unknown id
    unknown_id = str(ObjectId())
    foreign = (await other.gql.execute(RETRY, {"id": pending_id}))["retryDelivery"]
    unknown = (await other.gql.execute(RETRY, {"id": unknown_id}))["retryDelivery"]
    assert foreign["delivery"] is None and unknown["delivery"] is None
    assert [(e["field"], e["code"]) for e in foreign["errors"]] == [("id", "NOT_FOUND")]
    assert [{**e, "message": e["message"].replace(pending_id, "ID")} for e in foreign["errors"]] == [
        {**e, "message": e["message"].replace(unknown_id, "ID")} for e in unknown["errors"]
    ]
    await wait_for_status(account.gql, pending_id, "SUCCEEDED")
    assert len(receiver.received[p]) == 1  # nothing was sent for the refused retries


async def test_retry_and_recovery_are_refused_while_the_webhook_cannot_receive_them(
    stack: Stack, receiver: Receiver
) -> None:
    # given two failed deliveries: one of a webhook then disabled, one of a webhook then deleted
    account = await stack.account()
    off, gone = path(), path()
    off_id, _ = await create_webhook(account.gql, receiver.url(off, status(500)))
    gone_id, _ = await create_webhook(account.gql, receiver.url(gone, status(500)))
    since = datetime.now(UTC) - timedelta(seconds=1)
    published = (await publish(account.gql))["event"]["deliveries"]
    by_webhook = {d["webhookId"]: d["id"] for d in published}
    off_delivery, gone_delivery = by_webhook[off_id], by_webhook[gone_id]
    await all_final(account.gql, [off_delivery, gone_delivery], "FAILED")
    await set_enabled(account.gql, off_id, False)
    deleted = await account.gql.execute(
        "mutation($id: ID!) { deleteWebhook(id: $id) { errors { code } } }", {"id": gone_id}
    )
    assert deleted["deleteWebhook"]["errors"] == []
    # when the user retries them, and recovers the disabled webhook's deliveries
    retries = [
        (await account.gql.execute(RETRY, {"id": i}))["retryDelivery"] for i in (off_delivery, gone_delivery)
    ]
    variables = {"webhookId": off_id, "since": iso(since), "until": None, "dryRun": False}
    recovery = (await account.gql.execute(RECOVER, variables))["recoverDeliveries"]
    # then each is refused as a conflict (nothing could be sent), rather than answered as restarted
    for refused in retries:
        assert refused["delivery"] is None
        assert [(e["field"], e["code"]) for e in refused["errors"]] == [("id", "CONFLICT")]
    assert recovery["count"] == 0
    assert [(e["field"], e["code"]) for e in recovery["errors"]] == [("webhookId", "CONFLICT")]
    # and the deliveries are left as they were
    assert [(await delivery(account.gql, i))["status"] for i in (off_delivery, gone_delivery)] == [
        "FAILED",
        "FAILED",
    ]
    # and once the webhook is enabled again, its delivery is retried
    await set_enabled(account.gql, off_id, True)
    retried = (await account.gql.execute(RETRY, {"id": off_delivery}))["retryDelivery"]
    assert retried["errors"] == [] and retried["delivery"]["status"] == "PENDING"


# -- the spec's Node.js receiver ---------------------------------------------------------------------


async def test_the_specs_node_receiver_verifies_every_delivery(stack: Stack) -> None:
    # given two webhooks on a receiver written like the spec's Node.js example, which knows the first's secret
    account = await stack.account()
    port = free_port()
    url = f"http://127.0.0.1:{port}/webhook"
    good_id, secret = await create_webhook(account.gql, url, ["CANDIDATE_HIRED"], name="node")
    wrong_id, _ = await create_webhook(account.gql, url, ["OFFER_SENT"], name="node, other secret")
    node = require_tool("node", hint="apt-get install nodejs")
    proc = spawn([node, str(SPEC_RECEIVER), str(port), secret], quiet=True)
    try:
        await asyncio.to_thread(wait_for_port, port, proc, "spec_receiver.js")
        # when events with rich Unicode, numbers and nesting are published
        details: list[Any] = [
            {
                "candidateName": "Zoë Ñandú 🚀",
                "score": 0.1,
                "ratio": 1.0,
                "tags": ["a", "b"],
                "nested": {"2": "x", "b": 1},
            },
            {
                "nested": {"b": 1, "2": "x", "10": [1.5, -0.0, 1e21, 1e-7]},
                "quote": '"\\/\n\t\u2028',
                "big": 9007199254740991,
                "neg": -12.5e-3,
                "emoji": "👩‍👩‍👧",
                "ctl": "\x01\x1f",
            },
            None,
        ]
        published = await asyncio.gather(
            *(publish(account.gql, event="CANDIDATE_HIRED", details=d) for d in details)
        )
        # then node verified each of them (it answers 401 otherwise)
        for one in published:
            assert one["errors"] == [], one["errors"]
            delivery_id = one["event"]["deliveries"][0]["id"]
            done = await wait_for_status(account.gql, delivery_id, "SUCCEEDED", "FAILED")
            assert done["status"] == "SUCCEEDED", done["attempts"]
        # and a delivery signed with another secret is refused with 401
        test = (await account.gql.execute(TEST_WEBHOOK, {"id": wrong_id}))["testWebhook"]["delivery"]
        failed = await wait_for_status(account.gql, test["id"], "FAILED")
        assert [(a["statusCode"], a["errorClass"], a["responseBody"]) for a in failed["attempts"]] == [
            (401, "http_status", "Invalid signature")
        ]
        # and the test event verifies too
        test = (await account.gql.execute(TEST_WEBHOOK, {"id": good_id}))["testWebhook"]["delivery"]
        await wait_for_status(account.gql, test["id"], "SUCCEEDED")
    finally:
        stop(proc)
