"""Webhook management over GraphQL, through real HTTP, against a real SecantusDB server."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from bson import ObjectId

from tests.conftest import new_account
from tests.support import Account, GraphQLClient, run_stack
from webhooks.core import Core
from webhooks.db import raw_collections
from webhooks.models import Scope
from webhooks.settings import Settings

WEBHOOK_FIELDS = "id name url events enabled disabledReason disabledAt createdAt updatedAt"
CREATE = f"""
mutation($input: CreateWebhookInput!) {{
  createWebhook(input: $input) {{ webhook {{ {WEBHOOK_FIELDS} }} secret errors {{ field code message }} }}
}}"""
UPDATE = f"""
mutation($id: ID!, $input: UpdateWebhookInput!) {{
  updateWebhook(id: $id, input: $input) {{ webhook {{ {WEBHOOK_FIELDS} }} errors {{ field code message }} }}
}}"""
DELETE = "mutation($id: ID!) { deleteWebhook(id: $id) { deletedId errors { field code message } } }"
GET = f"query($id: ID!) {{ webhook(id: $id) {{ {WEBHOOK_FIELDS} }} }}"
LIST = f"""
query($first: Int, $after: String) {{
  webhooks(first: $first, after: $after) {{
    edges {{ cursor node {{ {WEBHOOK_FIELDS} }} }} pageInfo {{ hasNextPage endCursor }}
  }}
}}"""


def webhook_input(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "Slack bridge",
        "url": "https://hooks.example.com/hatchbeacon",
        "events": ["JOB_APPLICATION_CREATED", "CANDIDATE_HIRED"],
        **overrides,
    }


async def create(gql: GraphQLClient, **overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = (await gql.execute(CREATE, {"input": webhook_input(**overrides)}))[
        "createWebhook"
    ]
    return payload


async def create_ok(gql: GraphQLClient, **overrides: Any) -> dict[str, Any]:
    payload = await create(gql, **overrides)
    assert payload["errors"] == []
    webhook: dict[str, Any] = payload["webhook"]
    return webhook


async def error_codes(gql: GraphQLClient, **overrides: Any) -> list[tuple[str | None, str]]:
    payload = await create(gql, **overrides)
    assert payload["webhook"] is None and payload["secret"] is None
    return [(e["field"], e["code"]) for e in payload["errors"]]


async def test_create_returns_the_webhook_and_its_signing_secret_once(account: Account) -> None:
    # when
    payload = await create(account.gql)
    # then
    assert payload["errors"] == []
    webhook = payload["webhook"]
    assert re.fullmatch(r"[0-9a-f]{24}", webhook["id"])
    assert webhook["name"] == "Slack bridge"
    assert webhook["url"] == "https://hooks.example.com/hatchbeacon"
    assert webhook["events"] == ["JOB_APPLICATION_CREATED", "CANDIDATE_HIRED"]
    assert webhook["enabled"] is True and webhook["disabledReason"] is None
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", payload["secret"])
    # and the secret is never readable again
    fetched = await account.gql.raw("query($id: ID!) { webhook(id: $id) { secret } }", {"id": webhook["id"]})
    assert fetched["errors"] and "secret" in fetched["errors"][0]["message"]


async def test_the_secret_is_encrypted_at_rest(account: Account, core: Core) -> None:
    payload = await create(account.gql)
    doc = await raw_collections(core).webhooks.find_one({"_id": ObjectId(payload["webhook"]["id"])})
    assert doc is not None
    assert payload["secret"] not in str(doc)
    assert core.box.decrypt(doc["secret_enc"]) == payload["secret"]


async def test_duplicate_events_are_removed_and_the_name_trimmed(account: Account) -> None:
    webhook = await create_ok(
        account.gql, name="  Padded  ", events=["OFFER_SENT", "OFFER_SENT", "JOB_CLOSED"]
    )
    assert webhook["name"] == "Padded"
    assert webhook["events"] == ["OFFER_SENT", "JOB_CLOSED"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"name": "   "}, [("name", "REQUIRED")]),
        ({"name": "x" * 101}, [("name", "TOO_LONG")]),
        ({"url": ""}, [("url", "REQUIRED")]),
        ({"url": "hooks.example.com/x"}, [("url", "INVALID_URL")]),
        ({"url": "ftp://hooks.example.com/x"}, [("url", "HTTPS_REQUIRED")]),
        ({"url": "https://user:pw@hooks.example.com/x"}, [("url", "INVALID_URL")]),
        ({"url": "https://hooks.example.com/x#frag"}, [("url", "INVALID_URL")]),
        ({"url": "https://hooks.example.com/" + "a" * 2048}, [("url", "TOO_LONG")]),
        ({"url": "https://hooks.example.com:99999/x"}, [("url", "INVALID_URL")]),
        ({"events": []}, [("events", "REQUIRED")]),
        (
            {"name": "", "url": "nope", "events": []},
            [("name", "REQUIRED"), ("url", "INVALID_URL"), ("events", "REQUIRED")],
        ),
    ],
)
async def test_invalid_input_is_refused_with_specific_errors_and_nothing_stored(
    account: Account, overrides: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    # when
    codes = await error_codes(account.gql, **overrides)
    # then
    assert codes == expected
    listed = await account.gql.execute(LIST)
    assert listed["webhooks"]["edges"] == []


async def test_unknown_event_names_are_refused_by_the_schema(account: Account) -> None:
    body = await account.gql.raw(CREATE, {"input": webhook_input(events=["job_application_created"])})
    assert body["errors"] and "WebhookEvent" in body["errors"][0]["message"]


async def test_plain_http_is_refused_unless_allowed(settings: Settings) -> None:
    # given the API with the production default WEBHOOKS_ALLOW_HTTP=false (the real destination check)
    strict = settings.model_copy(update={"allow_http": False})
    async with run_stack(strict, worker=False) as stack:
        account = await stack.account()
        # when
        payload = await create(account.gql, url="http://hooks.example.com/x", events=[])
        # then
        assert payload["webhook"] is None
        assert [(e["field"], e["code"]) for e in payload["errors"]] == [
            ("url", "HTTPS_REQUIRED"),
            ("events", "REQUIRED"),
        ]
        assert (await account.gql.execute(LIST))["webhooks"]["edges"] == []


async def test_the_per_account_webhook_limit(settings: Settings) -> None:
    # given an account at its limit of 2 webhooks
    async with run_stack(settings.model_copy(update={"max_webhooks_per_account": 2}), worker=False) as stack:
        account = await stack.account()
        for i in range(2):
            await create_ok(account.gql, name=f"w{i}", url="https://127.0.0.1/x")
        # when
        refused = await create(account.gql, name="one too many", url="https://127.0.0.1/x")
        # then
        assert [e["code"] for e in refused["errors"]] == ["LIMIT_EXCEEDED"]
        assert len((await account.gql.execute(LIST))["webhooks"]["edges"]) == 2


@pytest.mark.parametrize(("existing", "racing"), [(9, 20), (5, 20)])
async def test_concurrent_creates_near_the_limit_fill_it_exactly(
    settings: Settings, existing: int, racing: int
) -> None:
    # given an account with `existing` of its 10 webhooks
    limit = 10
    async with run_stack(
        settings.model_copy(update={"max_webhooks_per_account": limit}), worker=False
    ) as stack:
        account = await stack.account()
        for i in range(existing):
            await create_ok(account.gql, name=f"w{i}", url="https://127.0.0.1/x")
        # when `racing` creates arrive at once
        results = await asyncio.gather(
            *(create(account.gql, name=f"race {i}", url="https://127.0.0.1/x") for i in range(racing))
        )
        # then exactly the free places are taken, and every other create is refused for the limit
        created = [r for r in results if r["webhook"] is not None]
        refused = [r for r in results if r["webhook"] is None]
        assert len(created) == limit - existing
        assert {e["code"] for r in refused for e in r["errors"]} == {"LIMIT_EXCEEDED"}
        listed = (await account.gql.execute(LIST, {"first": 100}))["webhooks"]["edges"]
        assert len(listed) == limit
        # and a deleted webhook frees its place for the next create
        await account.gql.execute(DELETE, {"id": created[0]["webhook"]["id"]})
        await create_ok(account.gql, name="after a delete", url="https://127.0.0.1/x")


async def test_list_is_newest_first_with_cursor_pagination(account: Account) -> None:
    ids = [(await create_ok(account.gql, name=f"hook {i}"))["id"] for i in range(5)]
    # when
    first = (await account.gql.execute(LIST, {"first": 2}))["webhooks"]
    second = (await account.gql.execute(LIST, {"first": 2, "after": first["pageInfo"]["endCursor"]}))[
        "webhooks"
    ]
    third = (await account.gql.execute(LIST, {"first": 2, "after": second["pageInfo"]["endCursor"]}))[
        "webhooks"
    ]
    # then
    seen = [e["node"]["id"] for page in (first, second, third) for e in page["edges"]]
    assert seen == list(reversed(ids))
    assert [p["pageInfo"]["hasNextPage"] for p in (first, second, third)] == [True, True, False]


async def test_list_refuses_bad_page_arguments(account: Account) -> None:
    too_many = await account.gql.raw(LIST, {"first": 101})
    assert too_many["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "first" in too_many["errors"][0]["message"]
    bad_cursor = await account.gql.raw(LIST, {"after": "garbage"})
    assert "cursor" in bad_cursor["errors"][0]["message"]


async def test_read_update_and_delete(account: Account) -> None:
    webhook = await create_ok(account.gql)
    # read
    assert (await account.gql.execute(GET, {"id": webhook["id"]}))["webhook"] == webhook
    # update
    updated = await account.gql.execute(
        UPDATE,
        {
            "id": webhook["id"],
            "input": {
                "name": "Renamed",
                "url": "https://other.example.com/in",
                "events": ["USER_CREATED"],
                "enabled": False,
            },
        },
    )
    assert updated["updateWebhook"]["errors"] == []
    after = updated["updateWebhook"]["webhook"]
    assert (after["name"], after["url"], after["events"], after["enabled"]) == (
        "Renamed",
        "https://other.example.com/in",
        ["USER_CREATED"],
        False,
    )
    assert after["disabledReason"] == "Disabled by a user" and after["disabledAt"]
    assert after["updatedAt"] >= webhook["updatedAt"]
    # re-enable clears the reason
    enabled = await account.gql.execute(UPDATE, {"id": webhook["id"], "input": {"enabled": True}})
    assert enabled["updateWebhook"]["webhook"]["enabled"] is True
    assert enabled["updateWebhook"]["webhook"]["disabledReason"] is None
    # delete
    deleted = (await account.gql.execute(DELETE, {"id": webhook["id"]}))["deleteWebhook"]
    assert deleted == {"deletedId": webhook["id"], "errors": []}
    assert (await account.gql.execute(GET, {"id": webhook["id"]}))["webhook"] is None


async def test_sending_enabled_as_it_was_keeps_the_disabled_reason_and_the_failure_count(
    account: Account, core: Core
) -> None:
    # given one webhook disabled automatically, and another enabled with 7 failures in a row
    disabled, failing = await create_ok(account.gql), await create_ok(account.gql)
    reason = "Disabled automatically after 10 consecutive failed deliveries"
    webhooks = raw_collections(core).webhooks
    await webhooks.update_one(
        {"_id": ObjectId(disabled["id"])},
        {"$set": {"enabled": False, "disabled_reason": reason, "consecutive_failures": 10}},
    )
    await webhooks.update_one({"_id": ObjectId(failing["id"])}, {"$set": {"consecutive_failures": 7}})
    # when a client renames both and sends back `enabled` unchanged (a form that submits every field)
    renamed = await account.gql.execute(
        UPDATE, {"id": disabled["id"], "input": {"name": "Renamed", "enabled": False}}
    )
    kept = await account.gql.execute(
        "mutation($id: ID!, $input: UpdateWebhookInput!) { updateWebhook(id: $id, input: $input) "
        "{ webhook { name enabled consecutiveFailures } errors { code } } }",
        {"id": failing["id"], "input": {"name": "Renamed too", "enabled": True}},
    )
    # then the reason for the disable stays, and the failures still count towards auto-disable
    after = renamed["updateWebhook"]["webhook"]
    assert (after["name"], after["enabled"], after["disabledReason"]) == ("Renamed", False, reason)
    assert kept["updateWebhook"]["webhook"] == {
        "name": "Renamed too",
        "enabled": True,
        "consecutiveFailures": 7,
    }


async def test_update_validates_like_create_and_writes_nothing_on_error(account: Account) -> None:
    webhook = await create_ok(account.gql)
    payload = (
        await account.gql.execute(
            UPDATE, {"id": webhook["id"], "input": {"name": "Fine", "url": "ftp://nope"}}
        )
    )["updateWebhook"]
    assert payload["webhook"] is None
    assert [(e["field"], e["code"]) for e in payload["errors"]] == [("url", "HTTPS_REQUIRED")]
    assert (await account.gql.execute(GET, {"id": webhook["id"]}))["webhook"]["name"] == "Slack bridge"


async def test_malformed_ids_get_a_clear_error(account: Account) -> None:
    body = await account.gql.raw(GET, {"id": "not-an-id"})
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "24-character" in body["errors"][0]["message"]
    for mutation, variables in ((UPDATE, {"id": "zz", "input": {"name": "x"}}), (DELETE, {"id": "zz"})):
        data = await account.gql.execute(mutation, variables)
        (payload,) = data.values()
        assert [(e["field"], e["code"]) for e in payload["errors"]] == [("id", "INVALID_ID")]


async def test_another_account_gets_exactly_the_unknown_id_answer(
    account: Account, other_account: Account
) -> None:
    # given a webhook of account A, and an id that exists nowhere
    mine = await create_ok(account.gql)
    unknown = str(ObjectId())
    # when account B tries every operation that takes an id, then B sees what an unknown id gets
    for mutation, variables in (
        (GET, {}),
        (UPDATE, {"input": {"name": "hijacked", "enabled": False}}),
        (DELETE, {}),
    ):
        theirs = await other_account.gql.raw(mutation, {"id": mine["id"], **variables})
        nothing = await other_account.gql.raw(mutation, {"id": unknown, **variables})
        assert _without_ids(theirs, mine["id"]) == _without_ids(nothing, unknown)
    # and B's list does not include it
    assert (await other_account.gql.execute(LIST))["webhooks"]["edges"] == []
    # and A's webhook is untouched
    assert (await account.gql.execute(GET, {"id": mine["id"]}))["webhook"] == mine


def _without_ids(body: dict[str, Any], raw_id: str) -> str:
    return str(body).replace(raw_id, "<id>")


async def test_event_catalog_lists_the_16_spec_events_with_examples(account: Account) -> None:
    data = await account.gql.execute("{ eventTypes { value name description example } }")
    names = [t["name"] for t in data["eventTypes"]]
    assert len(names) == 20 and "job_application_created" in names and "user_updated" in names
    for entry in data["eventTypes"]:
        if "." in entry["name"]:
            continue  # the operational events (tests/test_event_catalog.py)
        assert entry["value"] == entry["name"].upper()
        assert entry["description"]
        example = entry["example"]
        assert example["event"] == entry["name"]
        assert set(example) == {"event", "timestamp", "data"}
        assert set(example["data"]["log"]) == {
            "action",
            "resourceType",
            "resourceId",
            "userId",
            "userName",
            "userEmail",
            "timestamp",
        }
        assert {"method", "path"} <= set(example["data"]["details"])


@pytest.mark.parametrize("header", [None, "Bearer nope", "Basic abc", "Bearer"])
async def test_missing_or_unknown_keys_are_unauthenticated(http: Any, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    response = await http.post(
        "/graphql", json={"query": "{ webhooks { edges { cursor } } }"}, headers=headers
    )
    body = response.json()
    assert body["data"] is None
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_a_revoked_key_is_unauthenticated(core: Core, http: Any) -> None:
    account = await new_account(core, http)
    who = await core.api_keys.authenticate(account.api_key)
    assert who is not None
    await core.api_keys.revoke(who.account_id, who.key_id)
    body = await account.gql.raw("{ webhooks { edges { cursor } } }")
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def with_publish_only_key(core: Core, http: Any) -> tuple[Account, GraphQLClient]:
    """An account with one webhook (its manager's client), and a client with a publish-only key of it."""
    manager = await new_account(core, http)
    await create_ok(manager.gql)
    who = await core.api_keys.authenticate(manager.api_key)
    assert who is not None
    key = await core.api_keys.issue(who.account_id, frozenset({Scope.PUBLISH_EVENTS}))
    return manager, GraphQLClient(http, key)


async def test_a_publish_only_key_does_not_see_what_receivers_answered(core: Core, http: Any) -> None:
    # given a key that may only publish, for an account with one webhook
    manager, publisher = await with_publish_only_key(core, http)
    publish = """mutation($input: PublishEventInput!) { publishEvent(input: $input) {
      event { deliveries { id webhookId status ATTEMPTS } } errors { code } } }"""
    variables = {
        "input": {
            "event": "CANDIDATE_HIRED",
            "log": {
                "action": "hire",
                "resourceType": "candidate",
                "resourceId": str(ObjectId()),
                "userId": str(ObjectId()),
                "userName": "Jo",
                "userEmail": "jo@example.com",
            },
        }
    }
    # when it publishes asking for the deliveries' attempts, then again asking for the deliveries only
    nosy = await publisher.raw(publish.replace("ATTEMPTS", "attempts { statusCode responseBody }"), variables)
    plain = await publisher.execute(publish.replace("ATTEMPTS", ""), variables)
    # then the attempts (the delivery log) need webhooks:manage, and the refused publish stored nothing: a
    # client told FORBIDDEN must be able to publish again without sending the event twice
    assert nosy["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert "webhooks:manage" in nosy["errors"][0]["message"]
    # and the other sees which deliveries its event made, the only ones the account has
    made = plain["publishEvent"]["event"]["deliveries"]
    assert [d["status"] for d in made] == ["PENDING"]
    listed = await manager.gql.execute("{ deliveries { edges { node { id } } } }")
    assert [e["node"]["id"] for e in listed["deliveries"]["edges"]] == [d["id"] for d in made]


async def test_a_key_without_the_scope_is_forbidden(core: Core, http: Any) -> None:
    publisher = await new_account(core, http, frozenset({Scope.PUBLISH_EVENTS}))
    body = await publisher.gql.raw(CREATE, {"input": webhook_input()})
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert "webhooks:manage" in body["errors"][0]["message"]


async def test_a_publish_only_key_may_publish_with_attempts_left_out_by_a_directive(
    core: Core, http: Any
) -> None:
    # given a publish-only key of an account with one webhook, and one document for every key that selects
    # the attempts only when asked to (@include / @skip)
    manager, publisher = await with_publish_only_key(core, http)
    publish = """mutation($input: PublishEventInput!, $withAttempts: Boolean!) { publishEvent(input: $input) {
      event { deliveries { id status attempts @include(if: $withAttempts) { statusCode }
                           ... on Delivery @skip(if: true) { attempts { responseBody } } } }
      errors { code } } }"""
    log = {
        "action": "hire",
        "resourceType": "candidate",
        "resourceId": str(ObjectId()),
        "userId": str(ObjectId()),
        "userName": "Jo",
        "userEmail": "jo@example.com",
    }
    variables = {"input": {"event": "CANDIDATE_HIRED", "log": log}, "withAttempts": False}
    # when it publishes without asking for the attempts
    body = await publisher.execute(publish, variables)
    # then the event is published: the attempts it left out need no other scope
    made = body["publishEvent"]["event"]["deliveries"]
    assert [d["status"] for d in made] == ["PENDING"]
    assert all("attempts" not in d for d in made)
    # and asking for them is still refused, before anything is stored
    asked = await publisher.raw(publish, {**variables, "withAttempts": True})
    assert asked["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    listed = await manager.gql.execute("{ deliveries { edges { node { id } } } }")
    assert [e["node"]["id"] for e in listed["deliveries"]["edges"]] == [d["id"] for d in made]
