"""Endpoint controls through the GraphQL API: payload filters, custom headers, ordering."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import make_settings
from tests.delivery_support import PUBLISH, audit_log, publish_input, wait_for_status
from tests.receiver import Receiver
from tests.support import Account, GraphQLClient, Stack, run_stack
from webhooks.crypto import SecretBox
from webhooks.custom_headers import decrypted_headers
from webhooks.db import raw_collections
from webhooks.filters import matches, validate_filter
from workers.signing import redacted

WEBHOOK_FIELDS = "id name ordering filter headers { name maskedValue } updatedAt"
CREATE = f"""
mutation($input: CreateWebhookInput!) {{
  createWebhook(input: $input) {{ webhook {{ {WEBHOOK_FIELDS} }} secret errors {{ field code message }} }}
}}"""
UPDATE = f"""
mutation($id: ID!, $input: UpdateWebhookInput!) {{
  updateWebhook(id: $id, input: $input) {{ webhook {{ {WEBHOOK_FIELDS} }} errors {{ field code message }} }}
}}"""
GET = f"query($id: ID!) {{ webhook(id: $id) {{ {WEBHOOK_FIELDS} }} }}"
COUNT = "{ webhooks(first: 100) { edges { node { id } } } }"
DELETE = "mutation($id: ID!) { deleteWebhook(id: $id) { deletedId errors { code } } }"
DELIVERIES = "query($id: ID) { deliveries(webhookId: $id) { edges { node { id event } } } }"


@pytest.fixture(scope="module")
async def stack(mongodb_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    settings = make_settings(mongodb_url, tmp_path_factory.mktemp("controls"), retry_schedule=(0.0, 0.2))
    async with run_stack(settings) as running:
        yield running


def path() -> str:
    return f"/controls/{uuid.uuid4().hex[:8]}"


async def create(gql: GraphQLClient, url: str, **extra: Any) -> dict[str, Any]:
    variables = {"input": {"name": "Hook", "url": url, "events": ["JOB_APPLICATION_CREATED"], **extra}}
    payload: dict[str, Any] = (await gql.execute(CREATE, variables))["createWebhook"]
    return payload


async def update(gql: GraphQLClient, webhook_id: str, **changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = (await gql.execute(UPDATE, {"id": webhook_id, "input": changes}))[
        "updateWebhook"
    ]
    return payload


async def webhook_count(account: Account) -> int:
    return len((await account.gql.execute(COUNT))["webhooks"]["edges"])


def fields(payload: dict[str, Any]) -> dict[str, str]:
    return {e["field"]: e["code"] for e in payload["errors"]}


# --- payload filters ------------------------------------------------------------------------------


async def test_a_publish_creates_deliveries_only_for_webhooks_whose_filter_matches(
    stack: Stack, receiver: Receiver
) -> None:
    # given four webhooks of one account: no filter, a matching one, a non-matching one, a combination
    account = await stack.account()
    unfiltered, engineering, sales, combined = path(), path(), path(), path()
    plain = await create(account.gql, receiver.url(unfiltered))
    eng = await create(
        account.gql,
        receiver.url(engineering),
        filter={"path": "details.department", "eq": "Engineering"},
    )
    sal = await create(
        account.gql, receiver.url(sales), filter={"path": "details.department", "in": ["Sales", "Ops"]}
    )
    both = await create(
        account.gql,
        receiver.url(combined),
        filter={
            "all": [
                {"path": "log.resourceType", "in": ["job", "job_application"]},
                {"any": [{"path": "details.jobId", "exists": True}, {"path": "details.urgent", "eq": True}]},
            ]
        },
    )
    assert [p["errors"] for p in (eng, sal, both)] == [[], [], []]
    # when an Engineering application with a jobId is published
    details = {"method": "POST", "path": "/job-applications", "department": "Engineering", "jobId": "j1"}
    published = (await account.gql.execute(PUBLISH, {"input": publish_input(details=details)}))[
        "publishEvent"
    ]
    # then only the unfiltered, the Engineering and the combined webhook get a delivery, and receive it
    assert published["errors"] == []
    got = sorted(d["webhookId"] for d in published["event"]["deliveries"])
    assert got == sorted(h["webhook"]["id"] for h in (plain, eng, both))
    for p in (unfiltered, engineering, combined):
        (request,) = await receiver.wait_for(p, 1)
        assert request.json()["data"]["details"]["department"] == "Engineering"  # type: ignore[index]
    # when a Sales event without jobId follows (the positive signal that the first one is done)
    sales_details = {"method": "POST", "path": "/job-applications", "department": "Sales"}
    await account.gql.execute(PUBLISH, {"input": publish_input(details=sales_details)})
    await receiver.wait_for(sales, 1)
    await receiver.wait_for(unfiltered, 2)
    # then the Sales webhook never saw the Engineering event, and nothing else saw the Sales one
    assert len(receiver.received[sales]) == 1 and len(receiver.received[engineering]) == 1
    assert len(receiver.received[combined]) == 1
    sales_log = await account.gql.execute(DELIVERIES, {"id": sal["webhook"]["id"]})
    assert len(sales_log["deliveries"]["edges"]) == 1


async def test_a_filter_on_a_log_id_written_in_capitals_matches_the_events_published_with_it(
    stack: Stack, receiver: Receiver
) -> None:
    # given a webhook filtered on a resourceId written in capitals, as the publisher also writes it
    account = await stack.account()
    resource = "507F1F77BCF86CD799439AB1"
    hook = await create(
        account.gql,
        receiver.url(path()),
        filter={
            "any": [{"path": "log.resourceId", "eq": resource}, {"path": "log.userId", "in": [resource]}]
        },
    )
    assert hook["errors"] == []
    # when an event about that resource is published (its ids are sent in lower case: publishEvent
    # normalises them)
    log = audit_log(resourceId=resource)
    published = (await account.gql.execute(PUBLISH, {"input": publish_input(log=log)}))["publishEvent"]
    # then the webhook gets a delivery, and its filter is shown with the ids as they are sent
    assert published["errors"] == []
    assert [d["webhookId"] for d in published["event"]["deliveries"]] == [hook["webhook"]["id"]]
    assert hook["webhook"]["filter"] == {
        "any": [
            {"path": "log.resourceId", "eq": resource.lower()},
            {"path": "log.userId", "in": [resource.lower()]},
        ]
    }


async def test_a_filter_can_be_replaced_kept_or_cleared(stack: Stack, receiver: Receiver) -> None:
    account = await stack.account()
    created = await create(account.gql, receiver.url(path()), filter={"path": "details.a", "eq": 1.0})
    hook = created["webhook"]
    # the stored filter is shown as JSON, normalized as bodies are (1.0 is 1)
    assert hook["filter"] == {"path": "details.a", "eq": 1}
    # an update without filter keeps it
    renamed = await update(account.gql, hook["id"], name="Renamed")
    assert renamed["webhook"]["filter"] == {"path": "details.a", "eq": 1}
    # a new filter replaces it
    replaced = await update(account.gql, hook["id"], filter={"any": [{"path": "log.userId", "exists": True}]})
    assert replaced["webhook"]["filter"] == {"any": [{"path": "log.userId", "exists": True}]}
    # null clears it, and then every event passes
    cleared = await update(account.gql, hook["id"], filter=None)
    assert cleared["webhook"]["filter"] is None
    published = (await account.gql.execute(PUBLISH, {"input": publish_input()}))["publishEvent"]
    assert [d["webhookId"] for d in published["event"]["deliveries"]] == [hook["id"]]


@pytest.mark.parametrize(
    ("bad", "field", "words"),
    [
        ("details.department", "filter", "must be an object"),
        ({"path": "department", "eq": "x"}, "filter.path", "start with 'log.' or 'details.'"),
        ({"path": "log.resourcetype", "eq": "x"}, "filter.path", "log has no field 'resourcetype'"),
        ({"path": "details.a..b", "exists": True}, "filter.path", "empty segment"),
        ({"path": "details.a"}, "filter", "exactly one of 'eq', 'in' or 'exists' (found none)"),
        ({"path": "details.a", "eq": 1, "in": [1]}, "filter", "(found 'eq' and 'in')"),
        ({"path": "details.a", "equals": 1}, "filter", "unknown key 'equals'"),
        ({"path": "details.a", "in": []}, "filter.in", "non-empty list"),
        ({"path": "details.a", "exists": "yes"}, "filter.exists", "true or false"),
        ({"all": []}, "filter.all", "non-empty list"),
        ({"all": [{"path": "details.a", "eq": 1}], "any": []}, "filter", "must have no other key"),
        ({"any": [{"all": [{"path": "x", "eq": 1}]}]}, "filter.any.0.all.0.path", "start with"),
        ({"path": "details.n", "eq": 2**60}, "filter.eq", "Number.MAX_SAFE_INTEGER"),
        ({"path": "details.a", "in": list(range(101))}, "filter.in", "more than 100 values"),
        (
            {"all": [{"all": [{"all": [{"all": [{"all": [{"path": "details.a", "eq": 1}]}]}]}]}]},
            "filter.all.0.all.0.all.0.all.0.all.0",
            "more than 5 levels",
        ),
        ({"path": "details.a", "eq": "x" * 5000}, "filter", "the limit is 4096"),
    ],
)
async def test_an_invalid_filter_is_refused_with_its_place_and_nothing_is_written(
    stack: Stack, receiver: Receiver, bad: object, field: str, words: str
) -> None:
    # given an account with one webhook
    account = await stack.account()
    existing = await create(account.gql, receiver.url(path()))
    # when a webhook is created, or the existing one updated, with a bad filter
    created = await create(account.gql, receiver.url(path()), filter=bad)
    updated = await update(account.gql, existing["webhook"]["id"], filter=bad, name="Changed")
    # then both answer with the error at its place in the filter, and nothing changed
    for payload in (created, updated):
        assert payload["webhook"] is None
        assert field in fields(payload), payload["errors"]
        assert any(words in e["message"] for e in payload["errors"]), payload["errors"]
    assert await webhook_count(account) == 1
    unchanged = (await account.gql.execute(GET, {"id": existing["webhook"]["id"]}))["webhook"]
    assert unchanged["name"] == "Hook" and unchanged["filter"] is None


def test_filter_evaluation_compares_json_values_exactly() -> None:
    log = {"resourceType": "job", "resourceId": "507f1f77bcf86cd799439011"}
    details = {"n": 1, "flag": True, "tags": ["a", "b"], "nested": {"x": None}}

    def check(f: object) -> bool:
        return matches(validate_filter(f), log, details)

    assert check({"path": "details.n", "eq": 1.0})
    assert not check({"path": "details.flag", "eq": 1})  # true is not 1
    assert not check({"path": "details.n", "eq": True})
    assert not check({"path": "details.n", "eq": "1"})
    assert check({"path": "details.tags", "eq": ["a", "b"]})
    assert check({"path": "details.tags.1", "eq": "b"})
    assert check({"path": "details.nested.x", "exists": True})  # present, even as null
    assert check({"path": "details.nested.y", "exists": False})
    assert not check({"path": "details.missing", "eq": None})  # a missing path equals nothing
    assert check({"path": "log.resourceType", "in": ["job", 3]})
    assert check({"any": [{"path": "details.n", "eq": 2}, {"path": "details.flag", "in": [True]}]})
    assert not check({"all": [{"path": "details.n", "eq": 1}, {"path": "details.flag", "eq": False}]})
    assert matches(None, log, details)


# --- custom headers -------------------------------------------------------------------------------


async def test_custom_headers_are_stored_encrypted_and_shown_masked(stack: Stack, receiver: Receiver) -> None:
    # given a webhook created with two custom headers
    account = await stack.account()
    token = "Bearer rcv_" + "k" * 28 + "WXYZ"
    created = await create(
        account.gql,
        receiver.url(path()),
        headers=[{"name": "Authorization", "value": token}, {"name": "X-Tenant", "value": "acme"}],
    )
    # then the API shows the names and masked values only: long values end in their last 4 characters
    assert created["errors"] == []
    hook = created["webhook"]
    assert hook["headers"] == [
        {"name": "Authorization", "maskedValue": "••••••••WXYZ"},
        {"name": "X-Tenant", "maskedValue": "••••••••"},
    ]
    shown = await account.gql.execute(GET, {"id": hook["id"]})
    assert shown["webhook"]["headers"] == hook["headers"] and token not in str(shown)
    # and the stored document holds no value in clear, while the sender can decrypt them
    from bson import ObjectId

    doc = await raw_collections(stack.core).webhooks.find_one({"_id": ObjectId(hook["id"])})
    assert token not in str(doc) and "acme" not in str(doc)
    record = await stack.core.webhook_repo.get(ObjectId(account.id), ObjectId(hook["id"]))
    box: SecretBox = stack.core.box
    assert decrypted_headers(record, box) == {"Authorization": token, "X-Tenant": "acme"}
    # when the headers are replaced, then removed, or the webhook updated without them
    replaced = await update(account.gql, hook["id"], headers=[{"name": "X-Api-Key", "value": "k-123"}])
    assert replaced["webhook"]["headers"] == [{"name": "X-Api-Key", "maskedValue": "••••••••"}]
    kept = await update(account.gql, hook["id"], name="Renamed")
    assert kept["webhook"]["headers"] == replaced["webhook"]["headers"]
    removed = await update(account.gql, hook["id"], headers=[])
    assert removed["webhook"]["headers"] == []


@pytest.mark.parametrize(
    ("headers", "field", "words"),
    [
        ([{"name": "Content-Type", "value": "text/plain"}], "headers.0.name", "reserved"),
        ([{"name": "user-agent", "value": "x"}], "headers.0.name", "reserved"),
        ([{"name": "Host", "value": "evil.example"}], "headers.0.name", "reserved"),
        ([{"name": "Transfer-Encoding", "value": "chunked"}], "headers.0.name", "reserved"),
        ([{"name": "Webhook-Signature", "value": "v1,x"}], "headers.0.name", "webhook-*"),
        ([{"name": "X-Webhook-Sequence", "value": "1"}], "headers.0.name", "x-webhook-*"),
        ([{"name": "Proxy-Status", "value": "x"}], "headers.0.name", "proxy-*"),
        ([{"name": "proxy-foo", "value": "x"}], "headers.0.name", "proxy-*"),
        ([{"name": "X Bad", "value": "v"}], "headers.0.name", "not a valid header name"),
        ([{"name": "X-Colon:", "value": "v"}], "headers.0.name", "not a valid header name"),
        ([{"name": "X-Ok", "value": "a\r\nInjected: 1"}], "headers.0.value", "no CR, LF, NUL"),
        ([{"name": "X-Ok", "value": "a\x00b"}], "headers.0.value", "no CR, LF, NUL"),
        ([{"name": "X-Ok", "value": "  "}], "headers.0.value", "must not be empty"),
        ([{"name": "X-Ok", "value": "v" * 1001}], "headers.0.value", "the limit is 1000"),
        (
            [{"name": "X-A", "value": "1"}, {"name": "x-a", "value": "2"}],
            "headers.1.name",
            "case-insensitive",
        ),
        ([{"name": f"X-H{i}", "value": "v"} for i in range(11)], "headers", "at most 10"),
    ],
)
async def test_invalid_custom_headers_are_refused_and_nothing_is_written(
    stack: Stack, receiver: Receiver, headers: list[dict[str, str]], field: str, words: str
) -> None:
    account = await stack.account()
    existing = await create(account.gql, receiver.url(path()), headers=[{"name": "X-Keep", "value": "v"}])
    created = await create(account.gql, receiver.url(path()), headers=headers)
    updated = await update(account.gql, existing["webhook"]["id"], headers=headers)
    for payload in (created, updated):
        assert payload["webhook"] is None
        assert field in fields(payload), payload["errors"]
        assert any(words in e["message"] for e in payload["errors"]), payload["errors"]
        assert "Injected" not in str(payload["errors"])  # values are never echoed
    assert await webhook_count(account) == 1
    unchanged = (await account.gql.execute(GET, {"id": existing["webhook"]["id"]}))["webhook"]
    assert unchanged["headers"] == [{"name": "X-Keep", "maskedValue": "••••••••"}]


def test_the_delivery_log_redacts_custom_header_values_and_signatures() -> None:
    sent = {
        "Content-Type": "application/json",
        "User-Agent": "HatchBeacon-Webhooks/1",
        "X-Webhook-Event": "job_created",
        "X-Webhook-Delivery": "d1",
        "X-Webhook-Sequence": "3",
        "webhook-id": "d1",
        "webhook-timestamp": "1700000000",
        "X-Webhook-Signature": "abc",
        "webhook-signature": "v1,xyz",
        "Authorization": "Bearer receiver-token",
        "X-Tenant": "acme",
    }
    shown = redacted(sent)
    assert {k for k, v in shown.items() if v == "[redacted]"} == {
        "X-Webhook-Signature",
        "webhook-signature",
        "Authorization",
        "X-Tenant",
    }
    assert shown["X-Webhook-Event"] == "job_created" and shown["X-Webhook-Sequence"] == "3"


# --- ordering -------------------------------------------------------------------------------------


async def test_ordering_defaults_to_none_and_can_be_set_per_resource(
    stack: Stack, receiver: Receiver
) -> None:
    account = await stack.account()
    plain = await create(account.gql, receiver.url(path()))
    assert plain["webhook"]["ordering"] == "NONE"
    ordered = await create(account.gql, receiver.url(path()), ordering="PER_RESOURCE")
    assert ordered["webhook"]["ordering"] == "PER_RESOURCE"
    kept = await update(account.gql, ordered["webhook"]["id"], name="Renamed")
    assert kept["webhook"]["ordering"] == "PER_RESOURCE"
    back = await update(account.gql, ordered["webhook"]["id"], ordering="NONE")
    assert back["webhook"]["ordering"] == "NONE"
    bad = await account.gql.raw(UPDATE, {"id": plain["webhook"]["id"], "input": {"ordering": "FIFO"}})
    assert bad["errors"] and "WebhookOrdering" in bad["errors"][0]["message"]


async def test_controls_do_not_change_delivery_of_unfiltered_webhooks(
    stack: Stack, receiver: Receiver
) -> None:
    # given a webhook with headers and ordering but no filter
    account = await stack.account()
    p = path()
    hook = await create(
        account.gql, receiver.url(p), headers=[{"name": "X-Tenant", "value": "acme"}], ordering="PER_RESOURCE"
    )
    # when an event is published, then it is delivered and succeeds
    published = (await account.gql.execute(PUBLISH, {"input": publish_input()}))["publishEvent"]
    (delivery,) = published["event"]["deliveries"]
    assert delivery["webhookId"] == hook["webhook"]["id"]
    await receiver.wait_for(p, 1)
    await wait_for_status(account.gql, delivery["id"], "SUCCEEDED")


async def test_rotating_the_encryption_key_re_encrypts_custom_header_values(
    mongodb_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from cryptography.fernet import Fernet

    from webhooks.core import open_core
    from webhooks.custom_headers import HeaderInput
    from webhooks.endpoint_controls import EndpointControls
    from webhooks.events import EventName
    from webhooks.models import Principal, Scope
    from webhooks_cli.main import rotate_encryption_key

    # given a webhook with custom headers, encrypted under the old key
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    before = make_settings(mongodb_url, tmp_path_factory.mktemp("header-keys"), secret_keys=(old,))
    async with open_core(before) as core:
        account = await core.accounts.create("keys")
        who = Principal(account, frozenset(Scope), account)
        controls = EndpointControls(headers=[HeaderInput("Authorization", "Bearer t0k3n")])
        created = await core.webhooks.create(
            who, "w", "https://hooks.example.com/", [EventName.JOB_CREATED], controls
        )
    # when the key is rotated to [new, old]
    both = before.model_copy(update={"secret_keys": (new, old)})
    assert await rotate_encryption_key(both) == 1
    assert await rotate_encryption_key(both) == 0  # idempotent
    # then the new key alone decrypts the header values
    only_new = before.model_copy(update={"secret_keys": (new,)})
    async with open_core(only_new) as core:
        found = await core.webhook_repo.get(account, created.webhook.id)
        assert found is not None
        assert decrypted_headers(found, core.box) == {"Authorization": "Bearer t0k3n"}
        assert found.headers[0].masked_value == "••••••••"


async def test_deleting_an_ordered_webhook_drops_its_sequence_counters(
    stack: Stack, receiver: Receiver
) -> None:
    # given two ordered webhooks of an account, each with counters for three resources
    account = await stack.account()
    gone = (await create(account.gql, receiver.url(path()), ordering="PER_RESOURCE"))["webhook"]["id"]
    kept = (await create(account.gql, receiver.url(path()), ordering="PER_RESOURCE"))["webhook"]["id"]
    resources = [f"{uuid.uuid4().hex[:24]}" for _ in range(3)]
    for resource in resources:
        log = audit_log(resourceId=resource)
        published = await account.gql.execute(PUBLISH, {"input": publish_input(log=log)})
        assert not published["publishEvent"]["errors"]
    sequences = raw_collections(stack.core).sequences

    async def counters(webhook_id: str) -> set[str]:
        prefix = f"{webhook_id}:"
        return {d["_id"][len(prefix) :] async for d in sequences.find({"_id": {"$regex": f"^{prefix}"}})}

    assert await counters(gone) == await counters(kept) == set(resources)
    # when one of them is deleted
    deleted = await account.gql.execute(DELETE, {"id": gone})
    assert deleted["deleteWebhook"]["deletedId"] == gone
    # then its counters are gone with it, and the other webhook's stay
    assert await counters(gone) == set()
    assert await counters(kept) == set(resources)
