"""The event catalog states its payload (JSON Schema per event) and holds the operational events."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from bson import ObjectId
from jsonschema import Draft202012Validator, FormatChecker

from tests.delivery_support import PUBLISH, audit_log, publish_input
from tests.support import Account
from webhooks.crypto import SecretBox
from webhooks.events import EventName
from webhooks.models import Webhook
from webhooks.operational import (
    delivery_exhausted_body,
    delivery_recovered_body,
    failing_warning_due,
    notifies_about_delivery,
    recipients,
    webhook_disabled_body,
    webhook_failing_body,
)
from webhooks.payloads import AuditLog, build_event_body

CATALOG_QUERY = "{ eventTypes { value name description example schema } }"
OPERATIONAL = {"webhook.failing", "webhook.disabled", "delivery.exhausted", "delivery.recovered"}


def validator(schema: dict[str, Any]) -> Draft202012Validator:
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FormatChecker())


async def test_every_event_type_carries_a_json_schema_its_example_satisfies(account: Account) -> None:
    # when the catalog is read
    types = (await account.gql.execute(CATALOG_QUERY))["eventTypes"]
    # then it lists the 16 spec events and the 4 operational events, each with a valid schema
    names = {t["name"] for t in types}
    assert len(types) == 20 and names >= OPERATIONAL and "job_application_created" in names
    for entry in types:
        schema = entry["schema"]
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["properties"]["event"] == {"const": entry["name"]}
        validator(schema).validate(entry["example"])
        if entry["name"] not in OPERATIONAL:
            # log is fixed by the spec; details shows the spec's fields and stays open
            data = schema["properties"]["data"]["properties"]
            assert set(data["log"]["required"]) == set(audit_log()) | {"timestamp"}
            assert data["log"]["additionalProperties"] is False
            assert {"method", "path"} <= set(data["details"]["properties"])
            assert data["details"]["additionalProperties"] is True


def audit_log_record(**overrides: str) -> AuditLog:
    """The test audit log as publishEvent's own code holds it (before building the body)."""
    given = {**audit_log(), **overrides}
    return AuditLog(
        action=given["action"],
        resource_type=given["resourceType"],
        resource_id=given["resourceId"],
        user_id=given["userId"],
        user_name=given["userName"],
        user_email=given["userEmail"],
    )


async def test_a_published_body_satisfies_its_schema(account: Account) -> None:
    # given the schema of offer_sent and a receiver-shaped body built by publishEvent's own code
    types = (await account.gql.execute(CATALOG_QUERY))["eventTypes"]
    schema = next(t["schema"] for t in types if t["name"] == "offer_sent")
    given = audit_log()
    # the id accepted in either case and sent in lowercase, the name trimmed
    log = audit_log_record(resourceId=given["resourceId"].upper(), userName=f"  {given['userName']} ")
    body = build_event_body(
        "offer_sent", log, {"method": "POST", "path": "/offers"}, now=datetime.now(UTC), max_bytes=65536
    )
    validator(schema).validate(json.loads(body))


async def test_a_published_body_with_details_of_other_types_still_satisfies_its_schema(
    account: Account,
) -> None:
    # given the schema of job_application_created, whose example shows candidateName and jobTitle as text
    types = (await account.gql.execute(CATALOG_QUERY))["eventTypes"]
    schema = next(t["schema"] for t in types if t["name"] == "job_application_created")
    log = audit_log_record()
    # when publishEvent's own code builds a body whose details hold other types (details are any JSON)
    details = {"method": "POST", "path": "/x", "candidateName": 42, "jobTitle": None, "extra": [1]}
    body = build_event_body("job_application_created", log, details, now=datetime.now(UTC), max_bytes=65536)
    # then a receiver that validates with the published schema accepts it
    validator(schema).validate(json.loads(body))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("action", ""),
        ("resourceType", " "),
        ("resourceId", "nope"),
        ("userId", "507f191e810c19729de860e"),
        ("userName", "x" * 201),
        ("userEmail", "no-at-sign"),
        ("userEmail", "a@b@c"),
    ],
)
async def test_publish_refuses_exactly_the_logs_the_schema_refuses(
    account: Account, field: str, value: str
) -> None:
    # given the job_created schema and a log the schema refuses
    types = (await account.gql.execute(CATALOG_QUERY))["eventTypes"]
    schema = next(t["schema"] for t in types if t["name"] == "job_created")
    good = next(t["example"] for t in types if t["name"] == "job_created")
    bad = copy.deepcopy(good)
    bad["data"]["log"][field] = value
    assert not validator(schema).is_valid(bad)
    # when publishEvent gets that log, then it refuses it with today's error on that field
    payload = (
        await account.gql.execute(
            PUBLISH, {"input": publish_input("JOB_CREATED", log=audit_log(**{field: value}))}
        )
    )["publishEvent"]
    assert payload["event"] is None
    assert [e["field"] for e in payload["errors"]] == [f"log.{field}"]


@pytest.mark.parametrize(
    "event", ["WEBHOOK_FAILING", "WEBHOOK_DISABLED", "DELIVERY_EXHAUSTED", "DELIVERY_RECOVERED"]
)
async def test_operational_events_cannot_be_published(account: Account, event: str) -> None:
    payload = (await account.gql.execute(PUBLISH, {"input": publish_input(event)}))["publishEvent"]
    assert payload["event"] is None
    (error,) = payload["errors"]
    assert error["field"] == "event" and error["code"] == "INVALID"
    assert "operational event" in error["message"] and "cannot be published" in error["message"]


async def test_a_webhook_can_subscribe_to_operational_events(account: Account) -> None:
    create = """mutation($input: CreateWebhookInput!) {
      createWebhook(input: $input) { webhook { events } errors { field code message } } }"""
    events = ["WEBHOOK_FAILING", "WEBHOOK_DISABLED", "DELIVERY_EXHAUSTED", "DELIVERY_RECOVERED"]
    payload = await account.gql.execute(
        create, {"input": {"name": "Ops", "url": "http://127.0.0.1:9/ops", "events": events}}
    )
    assert payload["createWebhook"]["errors"] == []
    assert payload["createWebhook"]["webhook"]["events"] == events


# --- operational payloads and recipients (pure) --------------------------------------------------

NOW = datetime(2024, 1, 20, 10, 30, tzinfo=UTC)
HOOK = ObjectId("65a1b2c3d4e5f60718293a4b")
DELIVERY = ObjectId("65a1b2c3d4e5f60718293a4c")


def test_operational_bodies_are_canonical_and_match_their_schemas() -> None:
    from webhooks.event_schemas import payload_schema

    bodies = {
        EventName.WEBHOOK_FAILING: webhook_failing_body(HOOK, "CRM sync", 5, 10, now=NOW),
        EventName.WEBHOOK_DISABLED: webhook_disabled_body(HOOK, "CRM sync", "Disabled by a user", 0, now=NOW),
        EventName.DELIVERY_EXHAUSTED: delivery_exhausted_body(
            DELIVERY, HOOK, "CRM sync", "job_created", 6, now=NOW
        ),
        EventName.DELIVERY_RECOVERED: delivery_recovered_body(
            DELIVERY, HOOK, "CRM sync", "job_created", 7, now=NOW
        ),
    }
    for event, body in bodies.items():
        parsed = json.loads(body)
        # the same bytes JSON.stringify would give, in the envelope every event has
        assert body == json.dumps(parsed, separators=(",", ":"), ensure_ascii=False).encode()
        assert list(parsed) == ["event", "timestamp", "data"] and parsed["event"] == event.value
        assert parsed["timestamp"] == "2024-01-20T10:30:00.000Z"
        assert parsed["data"]["webhookId"] == str(HOOK) and parsed["data"]["webhookName"] == "CRM sync"
        validator(payload_schema(event)).validate(parsed)
    assert json.loads(bodies[EventName.WEBHOOK_FAILING])["data"]["consecutiveFailures"] == 5
    assert json.loads(bodies[EventName.WEBHOOK_DISABLED])["data"]["reason"] == "Disabled by a user"
    exhausted = json.loads(bodies[EventName.DELIVERY_EXHAUSTED])["data"]
    assert (exhausted["deliveryId"], exhausted["event"], exhausted["attempts"]) == (
        str(DELIVERY),
        "job_created",
        6,
    )


def _webhook(events: list[str], filter_text: str | None = None, enabled: bool = True) -> Webhook:
    box = SecretBox(["A" * 43 + "="])
    return Webhook(
        id=ObjectId(),
        account_id=ObjectId(),
        name="w",
        url="https://example.com/",
        events=tuple(events),
        enabled=enabled,
        secret_enc=box.encrypt("whsec_x"),
        consecutive_failures=0,
        disabled_reason=None,
        disabled_at=None,
        created_at=NOW,
        updated_at=NOW,
        filter_text=filter_text,
    )


def test_a_webhook_is_never_notified_about_itself_through_itself() -> None:
    # given an account's webhooks: the failing one (subscribed to its own events), two listeners
    # (one disabled), one filtered to another webhook, and one not subscribed
    failing = _webhook(["webhook.disabled", "job_created"])
    listener = _webhook(["webhook.disabled"])
    disabled_listener = _webhook(["webhook.disabled"], enabled=False)
    other_only = _webhook(["webhook.disabled"], f'{{"path":"details.webhookId","eq":"{ObjectId()}"}}')
    this_only = _webhook(["webhook.disabled"], f'{{"path":"details.webhookId","eq":"{failing.id}"}}')
    unsubscribed = _webhook(["job_created"])
    everyone = [failing, listener, disabled_listener, other_only, this_only, unsubscribed]
    body = webhook_disabled_body(failing.id, failing.name, "too many failures", 10, now=NOW)
    # then the event goes to the subscribed others whose filter passes; disabled ones get it HELD
    chosen = recipients(everyone, EventName.WEBHOOK_DISABLED, body, about=failing.id)
    assert chosen == [listener, disabled_listener, this_only]


def test_failing_warnings_come_at_5_and_8_and_never_with_the_disable() -> None:
    assert [failing_warning_due(n - 1, n, 10) for n in range(1, 11)] == [
        None,
        None,
        None,
        None,
        5,
        None,
        None,
        8,
        None,
        None,
    ]
    assert failing_warning_due(3, 9, 10) == 8  # a jump past both: the higher one
    assert failing_warning_due(7, 12, 10) is None  # disabled by this change: webhook.disabled says it
    assert failing_warning_due(4, 5, 6) == 5 and failing_warning_due(6, 7, 8) is None


def test_no_operational_event_is_emitted_about_operational_or_test_deliveries() -> None:
    assert notifies_about_delivery("job_created")
    assert not notifies_about_delivery("delivery.exhausted")
    assert not notifies_about_delivery("webhook.failing")
    assert not notifies_about_delivery("webhook.test")
