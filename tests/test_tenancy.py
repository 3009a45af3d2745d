"""Tenancy: a foreign id answers like an unknown id and changes nothing; operator-shaped input is data."""

from __future__ import annotations

from typing import Any

import pytest
from bson import ObjectId

from tests.delivery_support import PUBLISH, audit_log, publish_input
from tests.support import Account
from webhooks.core import Core
from webhooks.db import raw_collections

CREATE = """
mutation($input: CreateWebhookInput!) {
  createWebhook(input: $input) { webhook { id name url } secret errors { field code message } }
}"""
W = "id name url events enabled"
E = "errors { field code message }"

# (name, document, variables builder(webhook_id, delivery_id))
OPERATIONS: list[tuple[str, str, Any]] = [
    ("webhook", f"query($id: ID!) {{ webhook(id: $id) {{ {W} }} }}", lambda w, d: {"id": w}),
    (
        "delivery",
        "query($id: ID!) { delivery(id: $id) { id status attempts { id } } }",
        lambda w, d: {"id": d},
    ),
    (
        "deliveries",
        "query($w: ID) { deliveries(webhookId: $w) { edges { node { id } } pageInfo { hasNextPage } } }",
        lambda w, d: {"w": w},
    ),
    (
        "updateWebhook",
        f'mutation($id: ID!) {{ updateWebhook(id: $id, input: {{name: "pwned", url: "https://evil.example/", '
        f"enabled: false}}) {{ webhook {{ {W} }} {E} }} }}",
        lambda w, d: {"id": w},
    ),
    (
        "testWebhook",
        f"mutation($id: ID!) {{ testWebhook(id: $id) {{ delivery {{ id }} {E} }} }}",
        lambda w, d: {"id": w},
    ),
    (
        "retryDelivery",
        f"mutation($id: ID!) {{ retryDelivery(id: $id) {{ delivery {{ id }} {E} }} }}",
        lambda w, d: {"id": d},
    ),
    (
        "recoverDeliveries",
        f'mutation($w: ID!) {{ recoverDeliveries(webhookId: $w, since: "2020-01-01T00:00:00Z") '
        f"{{ count {E} }} }}",
        lambda w, d: {"w": w},
    ),
    (
        "recoverDeliveriesDryRun",
        f'mutation($w: ID!) {{ recoverDeliveries(webhookId: $w, since: "2020-01-01T00:00:00Z", dryRun: true) '
        f"{{ count dryRun {E} }} }}",
        lambda w, d: {"w": w},
    ),
    (
        "rotateWebhookSecret",
        f"mutation($id: ID!) {{ rotateWebhookSecret(id: $id) {{ webhook {{ id }} secret {E} }} }}",
        lambda w, d: {"id": w},
    ),
    (
        "deleteWebhook",
        f"mutation($id: ID!) {{ deleteWebhook(id: $id) {{ deletedId {E} }} }}",
        lambda w, d: {"id": w},
    ),
]


async def snapshot(core: Core, account_id: str) -> dict[str, list[dict[str, Any]]]:
    owner = ObjectId(account_id)
    cols = {
        "webhooks": raw_collections(core).webhooks,
        "events": raw_collections(core).events,
        "deliveries": raw_collections(core).deliveries,
    }
    return {name: await col.find({"account_id": owner}).sort("_id").to_list() for name, col in cols.items()}


def scrub(answer: dict[str, Any], *ids: str) -> str:
    text = repr(answer)
    for raw in ids:
        text = text.replace(raw, "<ID>")
    return text


async def test_another_accounts_ids_answer_like_unknown_ids_and_change_nothing(
    account: Account, other_account: Account, core: Core
) -> None:
    victim = other_account
    created = (
        await victim.gql.execute(
            CREATE,
            {
                "input": {
                    "name": "victim",
                    "url": "https://hooks.example.com/b",
                    "events": ["CANDIDATE_HIRED"],
                }
            },
        )
    )["createWebhook"]
    webhook_id = created["webhook"]["id"]
    test = (
        await victim.gql.execute(
            "mutation($id: ID!) { testWebhook(id: $id) { delivery { id } } }", {"id": webhook_id}
        )
    )["testWebhook"]
    delivery_id = test["delivery"]["id"]
    # the victim can see its own objects (so the ids are real)
    assert (await victim.gql.execute(OPERATIONS[0][1], {"id": webhook_id}))["webhook"]["id"] == webhook_id
    before = await snapshot(core, victim.id)
    unknown_webhook, unknown_delivery = str(ObjectId()), str(ObjectId())
    for name, document, variables in OPERATIONS:
        foreign = await account.gql.raw(document, variables(webhook_id, delivery_id))
        unknown = await account.gql.raw(document, variables(unknown_webhook, unknown_delivery))
        assert scrub(foreign, webhook_id, delivery_id) == scrub(unknown, unknown_webhook, unknown_delivery), (
            name
        )
        assert "victim" not in repr(foreign)
    assert await snapshot(core, victim.id) == before
    # and the attacker's own log shows nothing of the victim
    mine = await account.gql.execute("{ deliveries { edges { node { id webhookId } } } }")
    assert all(e["node"]["webhookId"] != webhook_id for e in mine["deliveries"]["edges"])


@pytest.mark.parametrize("raw", ["$gt", "$where", '{"$ne": null}', "507f1f77bcf86cd79943901", "", " "])
async def test_malformed_and_operator_shaped_ids_are_invalid_input(account: Account, raw: str) -> None:
    body = await account.gql.raw("query($id: ID!) { webhook(id: $id) { id } }", {"id": raw})
    assert not (body["data"] or {}).get("webhook")
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    payload = await account.gql.execute(
        "mutation($id: ID!) { deleteWebhook(id: $id) { deletedId errors { code } } }", {"id": raw}
    )
    assert payload["deleteWebhook"]["deletedId"] is None
    assert [e["code"] for e in payload["deleteWebhook"]["errors"]] == ["INVALID_ID"]


async def test_operator_shaped_input_is_stored_as_plain_data(account: Account, core: Core) -> None:
    created = await account.gql.execute(
        CREATE,
        {
            "input": {
                "name": "$where",
                "url": "https://hooks.example.com/$gt?$ne=1",
                "events": ["CANDIDATE_HIRED"],
            }
        },
    )
    webhook = created["createWebhook"]["webhook"]
    assert created["createWebhook"]["errors"] == []
    assert (webhook["name"], webhook["url"]) == ("$where", "https://hooks.example.com/$gt?$ne=1")
    doc = await raw_collections(core).webhooks.find_one({"_id": ObjectId(webhook["id"])})
    assert doc is not None and doc["name"] == "$where"

    details = {"$gt": "", "$where": "sleep(1000)", "nested": {"$ne": None, "a.b": 1}}
    first = (
        await account.gql.execute(
            PUBLISH,
            {
                "input": publish_input(
                    event="CANDIDATE_HIRED",
                    details=details,
                    idempotencyKey="$where",
                    log=audit_log(action="$set", userName="$ne"),
                )
            },
        )
    )["publishEvent"]
    assert first["errors"] == [] and first["event"]["replayed"] is False
    again = (
        await account.gql.execute(
            PUBLISH,
            {
                "input": publish_input(
                    event="CANDIDATE_HIRED",
                    details=details,
                    idempotencyKey="$where",
                    log=audit_log(action="$set", userName="$ne"),
                )
            },
        )
    )["publishEvent"]
    assert again["event"]["replayed"] is True and again["event"]["id"] == first["event"]["id"]
    other = (
        await account.gql.execute(
            PUBLISH, {"input": publish_input(event="CANDIDATE_HIRED", idempotencyKey='{"$ne": null}')}
        )
    )["publishEvent"]
    assert other["event"]["replayed"] is False and other["event"]["id"] != first["event"]["id"]
    stored = await raw_collections(core).events.find_one({"_id": ObjectId(first["event"]["id"])})
    assert stored is not None and stored["idempotency_key"] == "$where"
    assert b'"$gt":""' in bytes(stored["body"]) and b'"$where":"sleep(1000)"' in bytes(stored["body"])
    # filters are plain strings too: refused as names no event has, never read as operators
    log = await account.gql.raw('{ deliveries(event: "$where") { edges { node { id } } } }')
    assert log["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    log = await account.gql.raw(
        "query($e: String) { deliveries(event: $e) { edges { node { id } } } }", {"e": '{"$ne": null}'}
    )
    assert log["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
