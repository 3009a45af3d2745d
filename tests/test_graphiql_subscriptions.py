"""A subscription sent over HTTP POST gets a clear error (it is served over WebSocket), not a masked
"Unexpected error"; queries and mutations over POST are unaffected.  (GraphiQL's own use of the WebSocket
for subscriptions is covered by tests/test_graphiql_browser.py.)"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from graphql_api.transport import SUBSCRIPTION_OVER_HTTP
from tests.support import Account

ATTEMPTS = "subscription { deliveryAttempts { number statusCode deliveryStatus } }"


async def post(http: httpx.AsyncClient, body: dict[str, Any], api_key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return await http.post("/graphql", json=body, headers=headers)


@pytest.mark.parametrize("authenticated", [True, False])
async def test_a_subscription_over_http_post_is_refused_with_a_clear_error(
    http: httpx.AsyncClient, account: Account, authenticated: bool, caplog: pytest.LogCaptureFixture
) -> None:
    response = await post(http, {"query": ATTEMPTS}, account.api_key if authenticated else None)
    body = response.json()
    assert body.get("data") is None
    (error,) = body["errors"]
    assert error["message"] == SUBSCRIPTION_OVER_HTTP
    assert "WebSocket" in error["message"] and "/graphql" in error["message"]
    assert error["extensions"] == {"code": "BAD_REQUEST"}
    assert "unexpected error" not in caplog.text.lower()


async def test_the_selected_operation_decides(http: httpx.AsyncClient, account: Account) -> None:
    document = "query Types { eventTypes { name } }\n" + ATTEMPTS.replace("subscription", "subscription Live")
    refused = (await post(http, {"query": document, "operationName": "Live"}, account.api_key)).json()
    assert [e["extensions"]["code"] for e in refused["errors"]] == ["BAD_REQUEST"]
    answered = (await post(http, {"query": document, "operationName": "Types"}, account.api_key)).json()
    assert "errors" not in answered
    assert "job_application_created" in [t["name"] for t in answered["data"]["eventTypes"]]


async def test_an_invalid_subscription_over_http_gets_the_same_error(
    http: httpx.AsyncClient, account: Account
) -> None:
    body = (await post(http, {"query": "subscription { noSuchField }"}, account.api_key)).json()
    assert [e["message"] for e in body["errors"]] == [SUBSCRIPTION_OVER_HTTP]
