"""GraphQL abuse limits, CSRF, body size, masking, introspection/GraphiQL, rate limits, WS origins."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from bson import ObjectId
from websockets.asyncio.client import connect as ws_connect
from websockets.typing import Origin, Subprotocol

from graphql_api.app import create_app
from tests.conftest import make_settings
from tests.delivery_support import PUBLISH, publish_input
from tests.support import Account, GraphQLClient, Stack, run_stack, serve_asgi
from webhooks.core import Core
from webhooks.db import raw_collections
from webhooks.ratelimit import Action, RateLimiter

CREATE = """
mutation($input: CreateWebhookInput!) {
  createWebhook(input: $input) { webhook { id } secret errors { field code message } }
}"""
TEST = "mutation($id: ID!) { testWebhook(id: $id) { delivery { id } errors { field code message } } }"


def messages(body: dict[str, Any]) -> list[str]:
    return [e["message"] for e in body.get("errors") or []]


def create_body(name: str = "csrf") -> dict[str, Any]:
    return {
        "query": CREATE,
        "variables": {
            "input": {"name": name, "url": "https://hooks.example.com/x", "events": ["CANDIDATE_HIRED"]}
        },
    }


async def webhook_count(core: Core, account: Account) -> int:
    return await raw_collections(core).webhooks.count_documents({"account_id": ObjectId(account.id)})


# --- depth, aliases, tokens, page size ----------------------------------------------------------


async def test_queries_deeper_than_10_are_refused(account: Account) -> None:
    nested = "name"
    for field in ("a", "b", "c", "d", "e", "f", "g", "h", "i"):
        nested = f"{field} {{ {nested} }}"
    body = await account.gql.raw(f"query Deep {{ webhooks {{ edges {{ node {{ {nested} }} }} }} }}")
    assert body.get("data") is None
    assert "'Deep' exceeds maximum operation depth of 10" in messages(body)


async def test_an_ordinary_nested_query_is_within_the_depth_limit(account: Account) -> None:
    query = (
        "{ deliveries(first: 1) { edges { cursor node { id attempts { id number } } } "
        "pageInfo { hasNextPage } } }"
    )
    assert "deliveries" in await account.gql.execute(query)


async def test_more_than_15_aliases_are_refused(account: Account) -> None:
    ok = " ".join(f"a{i}: eventTypes {{ name }}" for i in range(15))
    assert len(await account.gql.execute(f"{{ {ok} }}")) == 15
    too_many = " ".join(f"a{i}: eventTypes {{ name }}" for i in range(16))
    body = await account.gql.raw(f"{{ {too_many} }}")
    assert body.get("data") is None
    assert messages(body) == ["16 aliases found. Allowed: 15"]


async def test_documents_over_2000_tokens_are_refused(account: Account) -> None:
    body = await account.gql.raw("{ eventTypes { " + "name " * 2100 + "} }")
    assert body.get("data") is None
    [message] = messages(body)
    assert "more than 2000 tokens" in message


@pytest.mark.parametrize("field", ["webhooks", "deliveries"])
async def test_pages_are_at_most_100(account: Account, field: str) -> None:
    assert (await account.gql.execute(f"{{ {field}(first: 100) {{ pageInfo {{ hasNextPage }} }} }}"))[field]
    body = await account.gql.raw(f"{{ {field}(first: 101) {{ pageInfo {{ hasNextPage }} }} }}")
    assert body["data"] is None
    assert any("100" in m for m in messages(body)), body


async def test_field_suggestions_are_not_given(account: Account) -> None:
    body = await account.gql.raw("{ webhoks { edges { cursor } } }")
    [message] = messages(body)
    assert "webhoks" in message and "Did you mean" not in message
    body = await account.gql.raw("{ webhooks { edgs { cursor } } }")
    assert all("Did you mean" not in m for m in messages(body)) and messages(body)


# --- transport: GET, batching, CSRF, body size --------------------------------------------------


async def test_mutations_over_get_are_refused_and_queries_answered(
    http: httpx.AsyncClient, account: Account, core: Core
) -> None:
    headers = {"Authorization": f"Bearer {account.api_key}", "Accept": "application/json"}
    mutation = (
        'mutation { createWebhook(input: {name: "get", url: "https://hooks.example.com/", '
        "events: [CANDIDATE_HIRED]}) { webhook { id } } }"
    )
    # when a mutation arrives over GET
    refused = await http.get("/graphql", params={"query": mutation}, headers=headers)
    # then it is refused (405, POST only) as JSON, and nothing is written
    assert refused.status_code == 405, refused.text
    assert refused.headers["allow"] == "POST"
    assert (
        refused.json()["errors"][0]["message"] == "Mutations are accepted over POST only; GET serves queries"
    )
    assert await webhook_count(core, account) == 0
    # while a query over GET is answered
    answered = await http.get("/graphql", params={"query": "{ eventTypes { name } }"}, headers=headers)
    assert answered.status_code == 200
    assert len(answered.json()["data"]["eventTypes"]) == 20


async def test_batched_requests_are_refused(http: httpx.AsyncClient, account: Account, core: Core) -> None:
    headers = {"Authorization": f"Bearer {account.api_key}"}
    response = await http.post("/graphql", json=[create_body("one"), create_body("two")], headers=headers)
    assert response.status_code == 400, response.text
    assert await webhook_count(core, account) == 0


@pytest.mark.parametrize(
    ("content_type", "encode"),
    [
        ("text/plain", lambda b: json.dumps(b).encode()),
        ("text/plain;charset=UTF-8", lambda b: json.dumps(b).encode()),
        (
            "application/x-www-form-urlencoded",
            lambda b: str(httpx.QueryParams({"query": b["query"]})).encode(),
        ),
        (
            "multipart/form-data; boundary=xyz",
            lambda b: (
                b'--xyz\r\nContent-Disposition: form-data; name="operations"\r\n\r\n'
                + json.dumps(b).encode()
                + b"\r\n--xyz--\r\n"
            ),
        ),
        (None, lambda b: json.dumps(b).encode()),
    ],
)
async def test_cross_site_simple_requests_are_refused(
    http: httpx.AsyncClient, account: Account, core: Core, content_type: str | None, encode: Any
) -> None:
    headers = {"Authorization": f"Bearer {account.api_key}"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = await http.post("/graphql", content=encode(create_body()), headers=headers)
    assert response.status_code == 415, response.text
    assert "application/json" in response.json()["errors"][0]["message"]
    assert await webhook_count(core, account) == 0


async def test_json_with_a_charset_is_accepted(http: httpx.AsyncClient, account: Account) -> None:
    response = await http.post(
        "/graphql",
        content=json.dumps({"query": "{ eventTypes { name } }"}).encode(),
        headers={
            "Authorization": f"Bearer {account.api_key}",
            "Content-Type": "application/json; charset=utf-8",
        },
    )
    assert response.status_code == 200 and response.json()["data"]["eventTypes"]


@pytest.fixture(scope="module")
async def small_api(
    mongodb_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[httpx.AsyncClient]:
    """An API with a 4 KiB body limit, introspection and GraphiQL off, and a WebSocket origin allow-list."""
    settings = make_settings(
        mongodb_url,
        tmp_path_factory.mktemp("small"),
        max_request_bytes=4096,
        introspection=False,
        graphiql=False,
        allowed_origins=("https://app.example.com",),
    )
    async with serve_asgi(create_app(settings)) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield client


async def test_bodies_over_the_limit_get_413(small_api: httpx.AsyncClient) -> None:
    big = {"query": "{ __typename }", "variables": {"pad": "x" * 5000}}
    response = await small_api.post("/graphql", json=big)
    assert response.status_code == 413
    assert "at most 4096 bytes" in response.json()["errors"][0]["message"]


async def test_streamed_bodies_without_content_length_are_counted(small_api: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"query": "{ __typename }", "variables": {"pad": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}}'

    response = await small_api.post(
        "/graphql", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert response.status_code == 413


async def test_a_lying_content_length_does_not_bypass_the_limit(small_api: httpx.AsyncClient) -> None:
    host, port = small_api.base_url.host, small_api.base_url.port
    assert port is not None
    reader, writer = await asyncio.open_connection(host, port)
    payload = b'{"query": "{ __typename }", "pad": "' + b"x" * 8000 + b'"}'
    writer.write(
        b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    writer.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n0\r\n\r\n")
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert b" 413 " in status_line


async def test_bodies_under_the_limit_pass(small_api: httpx.AsyncClient) -> None:
    response = await small_api.post("/graphql", json={"query": "{ __typename }"})
    assert response.status_code == 200 and response.json() == {"data": {"__typename": "Query"}}


# --- introspection and GraphiQL -----------------------------------------------------------------

INTROSPECT = "{ __schema { queryType { name } } }"


async def test_introspection_is_on_by_default(http: httpx.AsyncClient) -> None:
    response = await http.post("/graphql", json={"query": INTROSPECT})
    assert response.json()["data"]["__schema"]["queryType"]["name"] == "Query"


async def test_introspection_can_be_switched_off(small_api: httpx.AsyncClient) -> None:
    for query in (INTROSPECT, '{ __type(name: "Webhook") { name } }'):
        body = (await small_api.post("/graphql", json={"query": query})).json()
        assert body.get("data") is None
        assert any("introspection" in m.lower() for m in messages(body)), body


async def test_graphiql_can_be_switched_off(http: httpx.AsyncClient, small_api: httpx.AsyncClient) -> None:
    html = {"Accept": "text/html"}
    on = await http.get("/graphql", headers=html)
    assert on.status_code == 200 and "graphiql" in on.text.lower()
    off = await small_api.get("/graphql", headers=html)
    assert off.status_code in (400, 404, 405)
    assert "graphiql" not in off.text.lower()


# --- masking ------------------------------------------------------------------------------------


async def test_unexpected_errors_are_masked_with_a_reference_that_is_logged(
    mongodb_url: str, tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(mongodb_url, tmp_path_factory.mktemp("mask"))
    app = create_app(settings)
    async with serve_asgi(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        core: Core = app.state.core
        account_id = await core.accounts.create("mask")
        key = await core.api_keys.issue(account_id, frozenset(__import__("webhooks.models").models.Scope))

        async def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("database password is hunter2")

        core.webhooks.page = broken  # type: ignore[method-assign,assignment]
        auth = {"Authorization": f"Bearer {key}"}
        with caplog.at_level(logging.ERROR):
            response = await http.post(
                "/graphql",
                json={"query": "{ webhooks { edges { cursor } } }"},
                headers={**auth, "X-Request-ID": "req-4f2a"},
            )
            generated = await http.post(
                "/graphql", json={"query": "{ webhooks { edges { cursor } } }"}, headers=auth
            )
        # user errors keep their message
        created = await GraphQLClient(http, key).execute(
            CREATE,
            {"input": {"name": " ", "url": "https://hooks.example.com/", "events": ["CANDIDATE_HIRED"]}},
        )
    [error] = response.json()["errors"]
    assert error["message"] == "Unexpected error (ref req-4f2a)"
    assert error["extensions"] == {"code": "INTERNAL_SERVER_ERROR", "ref": "req-4f2a"}
    assert "hunter2" not in response.text
    [other] = generated.json()["errors"]
    ref = other["extensions"]["ref"]
    assert ref and other["message"] == f"Unexpected error (ref {ref})"
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR and "req-4f2a" in r.getMessage()]
    assert logged and logged[0].exc_info is not None and "hunter2" in str(logged[0].exc_info[1])
    assert any(ref in r.getMessage() for r in caplog.records)
    assert created["createWebhook"]["errors"][0]["message"] == "name must not be empty"


# --- rate limits --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def limited(mongodb_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    settings = make_settings(
        mongodb_url,
        tmp_path_factory.mktemp("limits"),
        rate_limit_test_per_minute=2,
        rate_limit_publish_per_minute=3,
        queue_name="webhooks:ratelimit-test",
    )
    async with run_stack(settings, worker=False) as running:
        yield running


async def _not_near_a_minute_boundary() -> None:
    if time.time() % 60 > 55:
        await asyncio.sleep(60 - time.time() % 60 + 0.1)


async def test_test_webhook_is_rate_limited_per_account(limited: Stack) -> None:
    a, b = await limited.account(), await limited.account()
    ids = []
    for acct in (a, b):
        created = await acct.gql.execute(
            CREATE,
            {"input": {"name": "rl", "url": "https://hooks.example.com/", "events": ["CANDIDATE_HIRED"]}},
        )
        ids.append(created["createWebhook"]["webhook"]["id"])
    await _not_near_a_minute_boundary()
    results = [(await a.gql.execute(TEST, {"id": ids[0]}))["testWebhook"] for _ in range(3)]
    assert [r["errors"] for r in results[:2]] == [[], []]
    assert results[2]["delivery"] is None
    [error] = results[2]["errors"]
    assert error["code"] == "RATE_LIMITED" and "2 calls per minute" in error["message"]
    # another account is not affected
    assert (await b.gql.execute(TEST, {"id": ids[1]}))["testWebhook"]["errors"] == []


async def test_publish_event_is_rate_limited_per_account(limited: Stack) -> None:
    a = await limited.account()
    await _not_near_a_minute_boundary()
    results = [(await a.gql.execute(PUBLISH, {"input": publish_input()}))["publishEvent"] for _ in range(4)]
    assert all(r["errors"] == [] for r in results[:3])
    assert results[3]["event"] is None
    assert [e["code"] for e in results[3]["errors"]] == ["RATE_LIMITED"]
    assert "publishEvent" in results[3]["errors"][0]["message"]


async def test_the_window_resets_each_minute(limited: Stack) -> None:
    limiter = RateLimiter(limited.core.redis, limited.settings)
    account = ObjectId()
    start = (time.time() // 60 + 1000) * 60  # a fresh window
    verdicts = [await limiter.hit(Action.TEST_WEBHOOK, account, now=start + i) for i in range(3)]
    assert [v.allowed for v in verdicts] == [True, True, False]
    assert verdicts[2].retry_after == 58
    assert (await limiter.hit(Action.TEST_WEBHOOK, account, now=start + 60)).allowed


# --- WebSocket origin ---------------------------------------------------------------------------


async def test_websocket_handshakes_from_foreign_origins_are_refused(small_api: httpx.AsyncClient) -> None:
    ws_url = str(small_api.base_url).replace("http://", "ws://").rstrip("/") + "/graphql"
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with ws_connect(
            ws_url,
            origin=Origin("https://evil.example.com"),
            subprotocols=[Subprotocol("graphql-transport-ws")],
        ):
            pass
    assert refused.value.response.status_code == 403
    async with ws_connect(
        ws_url,
        origin=Origin("https://app.example.com"),
        subprotocols=[Subprotocol("graphql-transport-ws")],
    ) as ws:
        assert ws.subprotocol == "graphql-transport-ws"
