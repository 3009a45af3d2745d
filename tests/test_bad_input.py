"""Every bad input gets a clear error (issue 12): no 5xx, no INTERNAL error, no customer data in the logs.

Through the real API over HTTP (and WebSocket), against SecantusDB and Redis; logs are read from the
in-process server's records.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.conftest import new_account
from tests.delivery_support import audit_log
from tests.support import Account, run_stack, served_api, service_env
from webhooks.core import Core
from webhooks.settings import Settings

CREATE = """
mutation($input: CreateWebhookInput!) {
  createWebhook(input: $input) { webhook { id name url } errors { field code message } }
}"""
UPDATE = """
mutation($id: ID!, $input: UpdateWebhookInput!) {
  updateWebhook(id: $id, input: $input) { webhook { id } errors { field code message } }
}"""
PUBLISH = """
mutation($input: PublishEventInput!) {
  publishEvent(input: $input) {
    event { id event replayed deliveries { id event } }
    errors { field code message }
  }
}"""
RECOVER = """
mutation($id: ID!, $since: DateTime!, $until: DateTime) {
  recoverDeliveries(webhookId: $id, since: $since, until: $until, dryRun: true) {
    count errors { field code }
  }
}"""
DELIVERIES = (
    "query($event: String, $after: String) { deliveries(event: $event, after: $after) { edges { cursor } } }"
)
SECRET_URL = "https://hooks.example.com/services/T000/B000/SECRETTOKEN123"


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO)  # the production default (pymongo's DEBUG lines carry documents)
    yield caplog


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured line as it would be written, tracebacks included."""
    formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")
    return "\n".join(formatter.format(r) for r in caplog.records)


def errors_above_warning(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


async def raw_gql(account: Account, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    """Like ``GraphQLClient.raw``, but ASCII-escaped JSON, which can carry lone surrogates (``\\ud800``)."""
    response = await post(
        account.gql.http, account, json.dumps({"query": query, "variables": variables}).encode()
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def post(
    http: httpx.AsyncClient, account: Account | None, content: bytes, **headers: str
) -> httpx.Response:
    sent = {"Content-Type": "application/json", **headers}
    if account is not None:
        sent["Authorization"] = f"Bearer {account.api_key}"
    return await http.post("/graphql", content=content, headers=sent)


# --- 1. malformed bodies ------------------------------------------------------------------------

MALFORMED = {
    "invalid UTF-8 in a string": b'{"query": "{ eventTypes { name } }", "variables": {"a": "\xff\xfe"}}',
    "null": b"null",
    "a number": b"42",
    "a string": b'"{ eventTypes { name } }"',
    "variables nested 5,000 deep": b'{"query": "{ eventTypes { name } }", "variables": {"a": '
    + b"[" * 5000
    + b"]" * 5000
    + b"}}",
    "a 5,000-digit number": b'{"query": "{ eventTypes { name } }", "variables": {"n": ' + b"9" * 5000 + b"}}",
}


@pytest.mark.parametrize("authenticated", [True, False])
@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_bodies_get_a_400_with_a_json_error(
    http: httpx.AsyncClient,
    account: Account,
    logs: pytest.LogCaptureFixture,
    body: bytes,
    authenticated: bool,
) -> None:
    # when
    response = await post(http, account if authenticated else None, body)
    # then
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    message = response.json()["errors"][0]["message"]
    assert message.startswith("The request body")
    assert errors_above_warning(logs) == []
    assert "Traceback" not in log_text(logs)


# --- 2. schema-valid input that used to end as INTERNAL_SERVER_ERROR ------------------------------


async def test_lone_surrogates_are_user_errors_naming_the_field(account: Account) -> None:
    # webhook name and URL
    for field in ("name", "url"):
        values: dict[str, Any] = {
            "name": "ok",
            "url": "https://hooks.example.com/x",
            "events": ["CANDIDATE_HIRED"],
        }
        values[field] = values[field] + "\ud800"
        payload = (await raw_gql(account, CREATE, {"input": values}))["data"]["createWebhook"]
        assert payload["webhook"] is None
        assert [e["field"] for e in payload["errors"]] == [field]
        assert "surrogate" in payload["errors"][0]["message"]
    # idempotencyKey
    published = (
        await raw_gql(
            account,
            PUBLISH,
            {"input": {"event": "CANDIDATE_HIRED", "log": audit_log(), "idempotencyKey": "k\udfff"}},
        )
    )["data"]
    assert [(e["field"], e["code"]) for e in published["publishEvent"]["errors"]] == [
        ("idempotencyKey", "INVALID")
    ]
    # a filter's path (its keys and values were refused already)
    for path in ("details.\ud800", "\udc00.x"):
        values = {"name": "f", "url": "https://hooks.example.com/x", "events": ["CANDIDATE_HIRED"]}
        values["filter"] = {"path": path, "eq": 1}
        payload = (await raw_gql(account, CREATE, {"input": values}))["data"]["createWebhook"]
        assert payload["webhook"] is None
        assert [(e["field"], e["code"]) for e in payload["errors"]] == [("filter.path", "INVALID")]
        assert "surrogate" in payload["errors"][0]["message"]
    # deliveries(event:)
    body = await raw_gql(account, DELIVERIES, {"event": "job_created\ud800"})
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert body["errors"][0]["extensions"]["field"] == "event"


@pytest.mark.parametrize("name", ["JOB_APPLICATION_CREATED", "job_application_create", "webhook.tset"])
async def test_a_delivery_log_filter_on_an_unknown_event_name_is_refused_not_an_empty_page(
    account: Account, name: str
) -> None:
    # when the delivery log is filtered on a name no delivery can have (the enum's spelling, a typo)
    body = await account.gql.raw(DELIVERIES, {"event": name})
    # then the error says so, naming the field, instead of an empty log that looks like "nothing sent"
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert body["errors"][0]["extensions"]["field"] == "event"
    assert "job_application_created" in body["errors"][0]["message"]
    # and the wire names filter as before
    for known in ("job_application_created", "webhook.test", "webhook.disabled"):
        assert "errors" not in await account.gql.raw(DELIVERIES, {"event": known})


@pytest.mark.parametrize("hex_id", ["0" * 24, "f" * 24])
async def test_forged_cursors_are_refused_as_bad_input(account: Account, hex_id: str) -> None:
    import base64

    cursor = base64.urlsafe_b64encode(f"v1:{hex_id}".encode()).decode().rstrip("=")
    body = await account.gql.raw(DELIVERIES, {"after": cursor})
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert body["errors"][0]["message"] == "after is not a cursor returned by this API"


async def test_recover_deliveries_refuses_dates_outside_what_ids_can_hold(account: Account) -> None:
    created = (
        await account.gql.execute(
            CREATE, {"input": {"name": "r", "url": "https://127.0.0.1/x", "events": ["CANDIDATE_HIRED"]}}
        )
    )["createWebhook"]["webhook"]
    for variables, field in (
        ({"since": "1960-01-01T00:00:00Z"}, "since"),
        ({"since": "2020-01-01T00:00:00Z", "until": "2200-01-01T00:00:00Z"}, "until"),
    ):
        payload = (await account.gql.execute(RECOVER, {"id": created["id"], **variables}))[
            "recoverDeliveries"
        ]
        assert payload["errors"] == [{"field": field, "code": "INVALID"}]


@pytest.mark.parametrize("hex_id", ["0" * 24, "00000001" + "a" * 16, "ffffffff" + "0" * 16])
async def test_well_formed_ids_at_the_ends_of_time_are_not_found_not_an_error(
    account: Account, hex_id: str
) -> None:
    # when a delivery is asked for, or retried, by an id of 1970 or 2106 (a "null id" placeholder, say)
    found = await account.gql.raw("query($id: ID!) { delivery(id: $id) { id } }", {"id": hex_id})
    retried = await account.gql.raw(
        "mutation($id: ID!) { retryDelivery(id: $id) { errors { field code } } }", {"id": hex_id}
    )
    # then there is no such delivery, as for any other unknown id
    assert found == {"data": {"delivery": None}}
    assert retried == {"data": {"retryDelivery": {"errors": [{"field": "id", "code": "NOT_FOUND"}]}}}


@pytest.mark.parametrize(
    "since", ["1970-01-01T00:00:00Z", "1970-01-01T00:00:00.5Z", "1970-01-01T01:00:00+01:00"]
)
async def test_recover_deliveries_accepts_the_first_second_ids_can_hold(account: Account, since: str) -> None:
    # given a webhook with nothing to recover
    created = (
        await account.gql.execute(
            CREATE, {"input": {"name": "r", "url": "https://127.0.0.1/x", "events": ["CANDIDATE_HIRED"]}}
        )
    )["createWebhook"]["webhook"]
    # when asked to recover from the very start of what the API accepts
    payload = (await account.gql.execute(RECOVER, {"id": created["id"], "since": since}))["recoverDeliveries"]
    # then it answers (nothing found), where it used to fail with an unexpected error
    assert payload["errors"] == []


@pytest.mark.parametrize("timestamp", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
async def test_log_timestamps_beyond_the_calendar_are_user_errors(account: Account, timestamp: str) -> None:
    payload = (
        await account.gql.execute(
            PUBLISH, {"input": {"event": "CANDIDATE_HIRED", "log": audit_log(timestamp=timestamp)}}
        )
    )["publishEvent"]
    assert payload["event"] is None
    assert [(e["field"], e["code"]) for e in payload["errors"]] == [("log.timestamp", "INVALID")]


# --- 3. customer data never reaches the logs ------------------------------------------------------


async def test_a_client_mistake_logs_one_warning_without_the_query_or_its_values(
    account: Account, logs: pytest.LogCaptureFixture
) -> None:
    # when a create with a bad enum value carries a URL with a token in it, and a list asks for first: 0
    bad_enum = await account.gql.raw(
        CREATE, {"input": {"name": "n", "url": SECRET_URL, "events": ["NOT_AN_EVENT"]}}
    )
    first_zero = await account.gql.raw("query Listing { webhooks(first: 0) { edges { cursor } } }")
    # then both are refused to the client
    assert bad_enum["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert first_zero["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    # and the log has one warning line each, with the operation and codes but no query text or values
    text = log_text(logs)
    assert "SECRETTOKEN123" not in text and "hooks.example.com" not in text and "webhooks(first" not in text
    assert errors_above_warning(logs) == []
    lines = [r for r in logs.records if r.name == "graphql_api.operations"]
    assert [r.levelno for r in lines] == [logging.WARNING, logging.WARNING]
    assert [r.__dict__["fields"]["operation"] for r in lines] == ["anonymous", "Listing"]
    assert [r.__dict__["fields"]["error_codes"] for r in lines] == [["BAD_USER_INPUT"], ["BAD_USER_INPUT"]]


async def test_an_invalid_operation_name_is_not_logged(
    http: httpx.AsyncClient, account: Account, logs: pytest.LogCaptureFixture
) -> None:
    body = json.dumps({"query": "query A { eventTypes { name } }", "operationName": SECRET_URL}).encode()
    response = await post(http, account, body)
    assert response.status_code == 400
    assert "SECRETTOKEN123" not in log_text(logs)


# --- 4. idempotency replays answer for the stored event -------------------------------------------


async def test_a_reused_idempotency_key_replays_the_same_event_and_refuses_another(account: Account) -> None:
    def publish(event: str) -> dict[str, Any]:
        return {"input": {"event": event, "log": audit_log(), "idempotencyKey": "key-1"}}

    first = (await account.gql.execute(PUBLISH, publish("JOB_APPLICATION_CREATED")))["publishEvent"]
    again = (await account.gql.execute(PUBLISH, publish("JOB_APPLICATION_CREATED")))["publishEvent"]
    other = (await account.gql.execute(PUBLISH, publish("CANDIDATE_HIRED")))["publishEvent"]
    assert again["event"]["replayed"] is True
    assert again["event"]["id"] == first["event"]["id"]
    assert again["event"]["event"] == "job_application_created"
    assert other["event"] is None
    assert [(e["field"], e["code"]) for e in other["errors"]] == [("idempotencyKey", "CONFLICT")]
    assert "job_application_created" in other["errors"][0]["message"]


async def test_a_reused_idempotency_key_with_other_content_is_refused_not_replayed(account: Account) -> None:
    # given an event published with a key (its log's timestamp left to the service)
    def publish(**details: Any) -> dict[str, Any]:
        return {
            "input": {
                "event": "CANDIDATE_HIRED",
                "log": audit_log(),
                "details": {"candidateName": "Jane Smith", **details},
                "idempotencyKey": "key-content",
            }
        }

    first = (await account.gql.execute(PUBLISH, publish()))["publishEvent"]
    # when the same key comes with other details (a bug in the caller, not a retry)
    other = (await account.gql.execute(PUBLISH, publish(jobTitle="CTO")))["publishEvent"]
    # then it is refused, naming the key, rather than answered with the first event as if it were that one
    assert other["event"] is None
    assert [(e["field"], e["code"]) for e in other["errors"]] == [("idempotencyKey", "CONFLICT")]
    # and a true retry, a moment later (its default timestamps would differ), is still a replay
    again = (await account.gql.execute(PUBLISH, publish()))["publishEvent"]
    assert again["errors"] == [] and again["event"]["replayed"] is True
    assert again["event"]["id"] == first["event"]["id"]


# --- 5. operation selection -----------------------------------------------------------------------


async def test_several_operations_need_an_operation_name(http: httpx.AsyncClient, account: Account) -> None:
    document = 'query A { eventTypes { name } } mutation B { deleteWebhook(id: "%s") { deletedId } }' % (
        "0" * 24
    )
    # without operationName: a request error, nothing runs
    response = await post(http, account, json.dumps({"query": document}).encode())
    assert response.status_code == 200
    body = response.json()
    assert (
        body["errors"][0]["message"] == "Must provide operation name if query contains multiple operations."
    )
    assert body.get("data") is None
    # with one: that one runs
    named = await post(http, account, json.dumps({"query": document, "operationName": "A"}).encode())
    assert len(named.json()["data"]["eventTypes"]) == 20
    # a non-string operationName is a 400
    wrong = await post(http, account, json.dumps({"query": document, "operationName": 5}).encode())
    assert wrong.status_code == 400
    assert wrong.json()["errors"][0]["message"] == "The request's 'operationName' must be a string or null"


# --- 6. no schema hints with introspection off ----------------------------------------------------


async def test_without_introspection_no_message_suggests_a_name(settings: Settings) -> None:
    async with run_stack(settings.model_copy(update={"introspection": False}), worker=False) as stack:
        account = await stack.account()
        probes = [
            ("{ deliveries(status: SUCEEDED) { edges { cursor } } }", None),
            ("query($s: DeliveryStatus) { deliveries(status: $s) { edges { cursor } } }", {"s": "SUCEEDED"}),
            ("{ deliveries(statu: PENDING) { edges { cursor } } }", None),
            ("query($e: WebhookEvnt) { eventTypes { name } }", None),
            ('{ webhook(id: "%s") { nam } }' % ("0" * 24), None),
        ]
        for query, variables in probes:
            body = await account.gql.raw(query, variables)
            assert body["errors"], query
            assert all("Did you mean" not in e["message"] for e in body["errors"]), body["errors"]


# --- 7. names and URLs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("url", "https://hooks.example.com/a\u00a0b", "INVALID_URL"),
        ("url", "https://hooks.example.com/\u202ex", "INVALID_URL"),
        ("url", "https://hooks.example.com:0/x", "INVALID_URL"),
        ("name", "\u200b\u200b\u200b", "INVALID"),
        ("name", "bad\x00name", "INVALID"),
        ("name", "   ", "REQUIRED"),
    ],
)
async def test_names_and_urls_are_refused_when_unreadable(
    account: Account, field: str, value: str, code: str
) -> None:
    values = {"name": "ok", "url": "https://hooks.example.com/x", "events": ["CANDIDATE_HIRED"], field: value}
    payload = (await account.gql.execute(CREATE, {"input": values}))["createWebhook"]
    assert payload["webhook"] is None
    assert [(e["field"], e["code"]) for e in payload["errors"]] == [(field, code)]


async def test_names_are_normalised(account: Account) -> None:
    decomposed = "  Cafe\u0301 hooks "
    values = {"name": decomposed, "url": "https://127.0.0.1/x", "events": ["CANDIDATE_HIRED"]}
    webhook = (await account.gql.execute(CREATE, {"input": values}))["createWebhook"]["webhook"]
    assert webhook["name"] == "Caf\u00e9 hooks"


async def test_updating_an_unknown_webhook_is_not_found_before_its_url_is_checked(account: Account) -> None:
    payload = (await account.gql.execute(UPDATE, {"id": "a" * 24, "input": {"url": "ftp://nowhere"}}))[
        "updateWebhook"
    ]
    assert [(e["field"], e["code"]) for e in payload["errors"]] == [("id", "NOT_FOUND")]


# --- 9. GraphQL over HTTP -------------------------------------------------------------------------


async def test_graphql_response_json_gets_the_specs_status_codes(
    http: httpx.AsyncClient, account: Account
) -> None:
    accept = {"Accept": "application/graphql-response+json"}
    # a request error (validation): 400, no data
    invalid = await post(http, account, json.dumps({"query": "{ nope }"}).encode(), **accept)
    assert invalid.status_code == 400
    assert invalid.headers["content-type"].startswith("application/graphql-response+json")
    assert "data" not in invalid.json()
    # a good request: 200 with data, same media type
    ok = await post(http, account, json.dumps({"query": "{ eventTypes { name } }"}).encode(), **accept)
    assert ok.status_code == 200
    assert ok.headers["content-type"].startswith("application/graphql-response+json")
    assert len(ok.json()["data"]["eventTypes"]) == 20
    # with application/json, the same request error stays a 200 with data null
    legacy = await post(http, account, json.dumps({"query": "{ nope }"}).encode(), Accept="application/json")
    assert legacy.status_code == 200
    assert legacy.headers["content-type"].startswith("application/json")


async def test_transport_errors_are_json(
    http: httpx.AsyncClient, account: Account, settings: Settings
) -> None:
    unsupported = await http.post("/graphql", content=b"query", headers={"Content-Type": "text/plain"})
    assert unsupported.status_code == 415
    assert unsupported.json()["errors"][0]["message"]
    too_large = await post(http, account, b"{" + b" " * (settings.max_request_bytes + 1) + b"}")
    assert too_large.status_code == 413
    assert too_large.json()["errors"][0]["message"]
    other_method = await http.put("/graphql", json={"query": "{ eventTypes { name } }"})
    assert other_method.status_code == 405
    assert other_method.headers["allow"] == "GET, POST"
    assert other_method.json()["errors"][0]["message"]
    for method in ("DELETE", "PATCH", "PUT"):  # with no body, or one that is not JSON: still the wrong method
        wrong = await http.request(method, "/graphql", content=b"x", headers={"Content-Type": "text/plain"})
        assert (wrong.status_code, wrong.headers["allow"]) == (405, "GET, POST"), wrong.text
        assert wrong.json()["errors"][0]["message"]
    for name in ("variables", "extensions"):  # a GET's JSON parameters: the error says which one
        params = {"query": "{ eventTypes { name } }", name: "{nope"}
        bad = await http.get("/graphql", params=params, headers={"Accept": "application/json"})
        assert bad.status_code == 400
        assert bad.json()["errors"][0]["message"] == f"The '{name}' query parameter is not valid JSON"
    no_query = await http.get("/graphql", headers={"Accept": "application/json"})
    assert no_query.status_code == 400
    assert no_query.json()["errors"][0]["message"]


async def test_content_type_is_case_insensitive(http: httpx.AsyncClient, account: Account) -> None:
    response = await http.post(
        "/graphql",
        content=json.dumps({"query": "{ eventTypes { name } }"}).encode(),
        headers={
            "Content-Type": "APPLICATION/JSON; charset=UTF-8",
            "Authorization": f"Bearer {account.api_key}",
        },
    )
    assert response.status_code == 200
    assert len(response.json()["data"]["eventTypes"]) == 20


async def test_connection_init_with_a_null_payload_is_read_as_no_credentials(api_url: str) -> None:
    url = api_url.replace("http://", "ws://") + "/graphql"
    async with websockets.connect(url, subprotocols=["graphql-transport-ws"], open_timeout=10) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": None}))
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
    # refused for lacking an API key (4403), not as a malformed message (4400)
    assert ws.close_code == 4403


async def test_a_served_api_logs_json_lines_without_query_strings_or_query_text(
    settings: Settings, core: Core, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    # given `webhooks serve` as in production (JSON lines), and an account
    account = await new_account(core, http)
    log_path = tmp_path / "serve.log"
    env = service_env(settings, WEBHOOKS_LOG_FORMAT="json", WEBHOOKS_LOG_LEVEL="INFO")
    async with (
        served_api(env, log_path) as served,
        httpx.AsyncClient(base_url=served.url, timeout=30) as client,
    ):
        headers = {"Authorization": f"Bearer {account.api_key}", "Accept": "application/json"}
        # when a query over GET carries a customer's URL, and a POST has a mistake with one
        got = await client.get(
            "/graphql",
            params={"query": 'query Probe { webhooks(after: "' + SECRET_URL + '") { edges { cursor } } }'},
            headers=headers,
        )
        posted = await client.post(
            "/graphql",
            json={
                "query": CREATE,
                "variables": {"input": {"name": "n", "url": SECRET_URL, "events": ["X"]}},
            },
            headers=headers,
        )
        assert got.status_code == 200 and posted.status_code == 200
        # a later, positive signal: this request's line is in the log, so the earlier ones are too
        marker = await client.get(
            "/graphql", params={"query": "query Marker { eventTypes { name } }"}, headers=headers
        )
        assert marker.status_code == 200
        for _ in range(100):
            if '"Marker"' in log_path.read_text():
                break
            await asyncio.sleep(0.1)
    # then every line is JSON, the GET's access line shows no query string, and no line has the URL
    text = log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert any(line.get("operation") == "Probe" for line in lines)
    access = [line["msg"] for line in lines if line["logger"] == "uvicorn.access"]
    assert any("GET /graphql?" in msg for msg in access)
    assert "SECRETTOKEN123" not in text and "hooks.example.com" not in text
