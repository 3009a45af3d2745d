"""Customer portal sessions over the real API (HTTP and WebSocket), and the /portal page's headers."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
import websockets.frames
from websockets.asyncio.client import ClientConnection

from graphql_api.app import create_app
from graphql_api.portal import frame_ancestors
from tests.browser import require_tools
from tests.conftest import make_settings, new_account
from tests.receiver import Receiver
from tests.support import Account, GraphQLClient, serve_asgi
from webhooks.core import Core

SESSION = """mutation($ttl: Int) { createPortalSession(ttlMinutes: $ttl) {
  url token expiresAt session { id expiresAt } errors { field code message } } }"""
SESSION_DEFAULT = "mutation { createPortalSession { url token expiresAt errors { field code message } } }"
REVOKE = "mutation($id: ID) { revokePortalSession(id: $id) { revokedId errors { field code message } } }"
WHO = "{ portalSession { id expiresAt } }"
WEBHOOKS = "{ webhooks { edges { node { id name } } } }"
CREATE = """mutation($url: String!) { createWebhook(input: {name: "Mine", url: $url, events: [JOB_CREATED]}) {
  webhook { id } errors { code } } }"""
PUBLISH = """mutation { publishEvent(input: {event: JOB_CREATED, log: {action: "a", resourceType: "job",
  resourceId: "507f1f77bcf86cd799439011", userId: "507f191e810c19729de860ea", userName: "A",
  userEmail: "a@b.c"}}) { errors { code } } }"""


def when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def session_of(account: Account, ttl: int | None = 60) -> dict[str, Any]:
    created: dict[str, Any] = (await account.gql.execute(SESSION, {"ttl": ttl}))["createPortalSession"]
    assert created["errors"] == [], created
    return created


def as_session(account: Account, token: str) -> GraphQLClient:
    return GraphQLClient(account.gql.http, token)


def error_code(body: dict[str, Any]) -> str:
    code: str = body["errors"][0]["extensions"]["code"]
    return code


async def test_a_session_lasts_60_minutes_by_default_and_its_url_carries_the_token_in_the_fragment(
    account: Account, api_url: str
) -> None:
    before = datetime.now(UTC)
    created = (await account.gql.execute(SESSION_DEFAULT))["createPortalSession"]
    assert created["errors"] == []
    assert created["url"] == f"{api_url}/portal#token={created['token']}"
    assert created["token"].startswith("hbp_")
    expires = when(created["expiresAt"])
    assert before + timedelta(minutes=59) < expires <= datetime.now(UTC) + timedelta(minutes=60)
    # the page learns its own expiry from the API, with the token
    who = (await as_session(account, created["token"]).execute(WHO))["portalSession"]
    assert when(who["expiresAt"]) == expires


@pytest.mark.parametrize("ttl", [0, -5, 24 * 60 + 1])
async def test_a_ttl_outside_1_minute_to_24_hours_is_refused_on_the_field(account: Account, ttl: int) -> None:
    created = (await account.gql.execute(SESSION, {"ttl": ttl}))["createPortalSession"]
    assert created["token"] is None and created["url"] is None
    assert [(e["field"], e["code"]) for e in created["errors"]] == [("ttlMinutes", "INVALID")]


async def test_24_hours_is_the_longest_session(account: Account) -> None:
    created = await session_of(account, 24 * 60)
    assert when(created["expiresAt"]) > datetime.now(UTC) + timedelta(hours=23, minutes=59)


async def test_a_session_manages_webhooks_of_its_account_only_and_nothing_else(
    account: Account, other_account: Account, receiver: Receiver
) -> None:
    receiver_url = receiver.url("/portal-sessions")
    # given a webhook of each account, and a session of the first
    await account.gql.execute(CREATE, {"url": receiver_url})
    await other_account.gql.execute(CREATE, {"url": receiver_url})
    mine = (await account.gql.execute(WEBHOOKS))["webhooks"]["edges"]
    portal = as_session(account, (await session_of(account))["token"])
    # it sees exactly its account's webhooks and can create one
    assert (await portal.execute(WEBHOOKS))["webhooks"]["edges"] == mine
    assert (await portal.execute(CREATE, {"url": receiver_url}))["createWebhook"]["errors"] == []
    # but it cannot publish events, nor mint a longer-lived session for itself
    assert error_code(await portal.raw(PUBLISH)) == "FORBIDDEN"
    refused = await portal.raw(SESSION, {"ttl": 1440})
    assert error_code(refused) == "FORBIDDEN" and "API key" in refused["errors"][0]["message"]


async def test_a_revoked_session_is_refused_at_once(account: Account, other_account: Account) -> None:
    created = await session_of(account)
    portal = as_session(account, created["token"])
    assert (await portal.execute(WHO))["portalSession"]["id"] == created["session"]["id"]
    # another account cannot revoke it: the same answer as an unknown id
    other = (await other_account.gql.execute(REVOKE, {"id": created["session"]["id"]}))["revokePortalSession"]
    assert [(e["field"], e["code"]) for e in other["errors"]] == [("id", "NOT_FOUND")]
    assert (await portal.execute(WHO))["portalSession"] is not None
    # the product's backend revokes it with its API key
    revoked = (await account.gql.execute(REVOKE, {"id": created["session"]["id"]}))["revokePortalSession"]
    assert revoked == {"revokedId": created["session"]["id"], "errors": []}
    assert error_code(await portal.raw(WEBHOOKS)) == "UNAUTHENTICATED"
    # revoking twice says so
    again = (await account.gql.execute(REVOKE, {"id": created["session"]["id"]}))["revokePortalSession"]
    assert [e["code"] for e in again["errors"]] == ["NOT_FOUND"]


async def test_a_session_can_end_itself_and_an_api_key_cannot_be_revoked_as_a_session(
    account: Account,
) -> None:
    portal = as_session(account, (await session_of(account))["token"])
    ended = (await portal.execute(REVOKE))["revokePortalSession"]
    assert ended["errors"] == [] and ended["revokedId"]
    assert error_code(await portal.raw(WHO)) == "UNAUTHENTICATED"
    # with an API key, an id is needed; the key itself is no portal session
    keyed = (await account.gql.execute(REVOKE))["revokePortalSession"]
    assert [(e["field"], e["code"]) for e in keyed["errors"]] == [("id", "REQUIRED")]
    assert (await account.gql.execute(WHO))["portalSession"] is None


async def test_a_session_opens_the_live_feed_over_graphql_transport_ws(
    account: Account, api_url: str
) -> None:
    token = (await session_of(account))["token"]
    url = api_url.replace("http", "ws") + "/graphql"
    async with websockets.connect(url, subprotocols=[websockets.Subprotocol("graphql-transport-ws")]) as ws:
        await ws.send(
            json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}})
        )
        assert json.loads(await ws.recv())["type"] == "connection_ack"
    await as_session(account, token).execute(REVOKE)
    async with websockets.connect(url, subprotocols=[websockets.Subprotocol("graphql-transport-ws")]) as ws:
        await ws.send(
            json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}})
        )
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403


# ------------------------------------------------------------------------------------------- page


async def test_the_portal_page_has_a_strict_csp_with_frame_ancestors_from_the_setting(
    mongodb_url: str, tmp_path: Path
) -> None:
    require_tools()
    settings = make_settings(mongodb_url, tmp_path, portal_frame_ancestors="'self'  https://app.example.com")
    async with serve_asgi(create_app(settings)) as url, httpx.AsyncClient(base_url=url) as http:
        page = await http.get("/portal")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = {
            d.split(" ", 1)[0]: d.split(" ", 1)[1] if " " in d else ""
            for d in page.headers["content-security-policy"].split("; ")
        }
        assert csp["default-src"] == "'none'"
        assert csp["script-src"] == "'self'" and csp["style-src"] == "'self'"  # no inline code, no eval
        assert csp["frame-ancestors"] == "'self' https://app.example.com"
        assert csp["connect-src"].split()[0] == "'self'"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert page.headers["cache-control"] == "no-store"
        # the page's own code and the npm-built modules are served by the service itself
        for asset in (
            "/portal/app/portal.js",
            "/portal/vendor/htm-preact.mjs",
            "/portal/vendor/graphql-ws/client.mjs",
        ):
            served = await http.get(asset)
            assert served.status_code == 200, asset
            assert served.headers["content-type"].startswith("text/javascript"), asset
        assert (await http.get("/portal/app/../portal.py")).status_code == 404


async def test_the_default_allows_embedding_on_the_same_origin_only(
    settings: Any, http: httpx.AsyncClient
) -> None:
    require_tools()
    page = await http.get("/portal")
    assert "frame-ancestors 'self'" in page.headers["content-security-policy"].split("; ")


@pytest.mark.parametrize(
    "value", ["", "https://a.example.com; script-src *", "'none' https://a.example.com", "'unsafe-inline'"]
)
def test_a_bad_frame_ancestors_setting_is_refused_at_start(value: str) -> None:
    with pytest.raises(ValueError, match="WEBHOOKS_PORTAL_FRAME_ANCESTORS"):
        frame_ancestors(value)


@contextlib.asynccontextmanager
async def live_feed(api_url: str, token: str) -> AsyncIterator[ClientConnection]:
    """A graphql-transport-ws connection authenticated with ``token``, with a subscription in place."""
    url = api_url.replace("http", "ws") + "/graphql"
    async with websockets.connect(url, subprotocols=[websockets.Subprotocol("graphql-transport-ws")]) as ws:
        auth = {"Authorization": f"Bearer {token}"}
        await ws.send(json.dumps({"type": "connection_init", "payload": auth}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        query = "subscription { deliveryAttempts { id } }"
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}))
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await ws.recv())["type"] == "pong"
        yield ws


async def closed_by_the_server(ws: ClientConnection) -> websockets.frames.Close:
    """The close frame the server ends ``ws`` with (read until then)."""
    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with asyncio.timeout(30):
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd


async def test_revoking_a_session_closes_its_open_live_feed(account: Account, api_url: str) -> None:
    # given a session's subscription, live
    created = await session_of(account)
    async with live_feed(api_url, created["token"]) as ws:
        # when the product's backend revokes it
        await account.gql.execute(REVOKE, {"id": created["session"]["id"]})
        # then the server closes the socket: the feed does not outlive the session
        assert (await closed_by_the_server(ws)).code == 4403


async def test_revoking_an_api_key_closes_its_open_live_feed(core: Core, http: Any, api_url: str) -> None:
    # given a subscription opened with an API key, live
    holder = await new_account(core, http)
    who = await core.api_keys.authenticate(holder.api_key)
    assert who is not None
    async with live_feed(api_url, holder.api_key) as ws:
        # when the key is revoked
        assert await core.api_keys.revoke(who.account_id, who.key_id)
        # then the server closes the socket: the feed does not outlive the key
        ended = await closed_by_the_server(ws)
    assert (ended.code, ended.reason) == (4403, "The API key is no longer valid")


async def test_a_second_connection_init_over_legacy_graphql_ws_does_not_keep_a_revoked_key_s_feed(
    core: Core, http: Any, api_url: str, other_account: Account
) -> None:
    # given a legacy graphql-ws socket opened with an API key, with a live subscription of its account
    holder = await new_account(core, http)
    who = await core.api_keys.authenticate(holder.api_key)
    assert who is not None
    url = api_url.replace("http", "ws") + "/graphql"

    def init(key: str) -> str:
        return json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {key}"}})

    async with websockets.connect(url, subprotocols=[websockets.Subprotocol("graphql-ws")]) as ws:
        await ws.send(init(holder.api_key))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        query = "subscription { deliveryAttempts { id } }"
        await ws.send(json.dumps({"id": "1", "type": "start", "payload": {"query": query}}))
        # when the client sends connection_init again, with a valid key of another account
        await ws.send(init(other_account.api_key))
        # and the first key is revoked
        assert await core.api_keys.revoke(who.account_id, who.key_id)
        # then the socket the revoked key opened does not stay open: the second init kept nothing alive
        with pytest.raises(websockets.ConnectionClosed):
            async with asyncio.timeout(30):
                while True:
                    await ws.recv()
