"""GraphiQL in a real browser: Playwright driving Debian's headless chromium (tests/browser.py), against
the API over real HTTP.

Checks that the page loads and renders from this service alone (every request the browser makes goes to
``127.0.0.1:PORT``), that a query typed into the editor with the API key in the headers pane returns data
in the result pane, and that a subscription runs over a WebSocket (graphql-transport-ws, the headers pane
as connection_init payload): a ``testWebhook`` delivery's attempt shows up live in the result pane, and a
refused key ends the subscription at once with a readable error instead of reconnecting.

Screenshots are kept in ``test-artifacts/``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Page, ViewportSize

from tests.browser import Requests, chromium, require_tools, screenshot
from tests.conftest import make_settings
from tests.delivery_support import create_webhook
from tests.receiver import Receiver
from tests.test_subscriptions import TEST_WEBHOOK, Api, run_api
from webhooks.pubsub import ATTEMPTS_CHANNEL

VIEWPORT = ViewportSize(width=1400, height=1000)


# ------------------------------------------------------------------------------------------- page JS

# GraphiQL 3 uses CodeMirror 5 editors: each `.CodeMirror` element carries its editor instance.
SET_EDITORS = """
(() => {
  const query = document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror;
  // The variables and headers editors share one section; the inactive one's wrapper is `.hidden`.
  const tools = [...document.querySelectorAll('.graphiql-editor-tool .graphiql-editor')]
    .filter(el => !el.classList.contains('hidden')).map(el => el.querySelector('.CodeMirror'));
  const label = document.querySelector('.graphiql-editor-tool').getAttribute('aria-label');
  if (tools.length !== 1 || label !== 'Headers') {
    throw new Error('expected the headers editor to be the visible tool: ' + label + ' ' + tools.length);
  }
  tools[0].CodeMirror.setValue(%(headers)s);
  query.setValue(%(query)s);
  return true;
})()
"""
RUN = "document.querySelector('.graphiql-execute-button').click(), true"
RESULT = (
    "(document.querySelector('.result-window .CodeMirror') || {CodeMirror: {getValue: () => ''}})"
    ".CodeMirror.getValue()"
)


async def run_in_graphiql(page: Page, query: str, headers: dict[str, str]) -> None:
    await page.evaluate(
        SET_EDITORS % {"headers": json.dumps(json.dumps(headers, indent=2)), "query": json.dumps(query)}
    )
    await page.evaluate(RUN)


async def poll(page: Page, expression: str, what: str, timeout: float = 20.0) -> Any:
    """Evaluate ``expression`` until it is truthy. (Not ``wait_for_function``: its predicate runs through
    ``eval``, which the page's CSP rightly forbids.)"""
    deadline = time.monotonic() + timeout
    while not (value := await page.evaluate(expression)):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)
    return value


async def result_containing(page: Page, text: str, timeout: float = 20.0) -> str:
    """The result pane's text once it contains ``text``."""
    expression = f"(() => {{ const v = {RESULT}; return v.includes({json.dumps(text)}) && v; }})()"
    value: str = await poll(page, expression, f"{text!r} in the result pane", timeout)
    return value


async def wait_until(predicate: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def open_graphiql(page: Page, origin: str) -> None:
    await page.goto(f"{origin}/graphql")
    await poll(page, "!!document.querySelector('.graphiql-query-editor .CodeMirror')", "GraphiQL to render")


# --------------------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
async def browser_api(mongodb_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Api]:
    require_tools()
    settings = make_settings(mongodb_url, tmp_path_factory.mktemp("browser"))
    # A worker too: testWebhook's delivery is made by it, and its attempt reaches the live feed.
    async with run_api(settings, worker=True) as running:
        yield running


async def test_graphiql_runs_a_query_from_this_service_alone(browser_api: Api) -> None:
    api = browser_api
    account = await api.account()
    origin = api.url  # http://127.0.0.1:PORT
    async with chromium() as browser:
        page = await browser.new_page(viewport=VIEWPORT)
        requests = Requests(page)
        # the page loads and GraphiQL renders
        await open_graphiql(page, origin)
        assert await page.title() == "HatchBeacon Webhooks · GraphiQL"
        # a query with the API key in the headers pane shows its result in the result pane
        await run_in_graphiql(page, "{ eventTypes { name } }", {"Authorization": f"Bearer {account.api_key}"})
        shown = await result_containing(page, "job_application_created")
        names = [t["name"] for t in json.loads(shown)["data"]["eventTypes"]]
        assert "job_application_created" in names
        # nothing was requested from any other host
        assert requests.urls and not requests.foreign(origin), requests.foreign(origin)


SUBSCRIPTION = "subscription { deliveryAttempts { number statusCode deliveryStatus } }"


async def test_graphiql_runs_a_subscription_over_a_websocket(browser_api: Api, receiver: Receiver) -> None:
    api = browser_api
    account = await api.account()
    webhook_id, _ = await create_webhook(account.gql, receiver.url(f"/graphiql/{uuid.uuid4().hex[:8]}"))
    origin = api.url
    auth = {"Authorization": f"Bearer {account.api_key}"}
    async with chromium() as browser:
        page = await browser.new_page(viewport=VIEWPORT)
        requests = Requests(page)
        posted: list[str] = []
        page.on("request", lambda r: posted.append(r.post_data or "") if r.method == "POST" else None)
        await open_graphiql(page, origin)
        # the subscription, with the key in the headers pane, is registered with the live feed
        await run_in_graphiql(page, SUBSCRIPTION, auth)
        await wait_until(
            lambda: api.feed.subscriber_count(ATTEMPTS_CHANNEL, account.id) == 1,
            what="the subscription to reach the server",
        )
        # the page's WebSocket event reaches this process on its own schedule, after the server saw it
        await wait_until(lambda: requests.websockets(), what="the page's WebSocket event")
        assert [urlsplit(u).path for u in requests.websockets()] == ["/graphql"]
        # a delivery made meanwhile shows up in the result pane
        tested = (await account.gql.execute(TEST_WEBHOOK, {"id": webhook_id}))["testWebhook"]
        assert tested["errors"] == [], tested
        shown = await result_containing(page, "deliveryAttempts")
        assert json.loads(shown) == {
            "data": {"deliveryAttempts": {"number": 1, "statusCode": 200, "deliveryStatus": "SUCCEEDED"}}
        }
        await screenshot(page, "graphiql-subscription")
        # the subscription never went over HTTP; stopping it in GraphiQL ends it on the server
        assert not [body for body in posted if "deliveryAttempts" in body], posted
        await page.evaluate(RUN)  # the execute button is the stop button while a subscription runs
        await wait_until(
            lambda: api.feed.subscriber_count(ATTEMPTS_CHANNEL, account.id) == 0,
            what="the subscription to end on the server",
        )
        assert requests.urls and not requests.foreign(origin), requests.foreign(origin)


async def test_graphiql_runs_a_subscription_typed_over_a_query_at_once(browser_api: Api) -> None:
    """GraphiQL re-parses the editor 100 ms after an edit (debounced) and hands the fetcher that parse as
    ``documentAST``: a subscription pasted over a query and run at once (Ctrl-Enter) must still go over the
    WebSocket, as the text being sent says, not be POSTed because the previous query's parse says "query"."""
    api = browser_api
    account = await api.account()
    auth = {"Authorization": f"Bearer {account.api_key}"}
    async with chromium() as browser:
        page = await browser.new_page(viewport=VIEWPORT)
        posted: list[str] = []
        page.on("request", lambda r: posted.append(r.post_data or "") if r.method == "POST" else None)
        await open_graphiql(page, api.url)
        # given GraphiQL has run a query (its parse of the editor is that query's)
        await run_in_graphiql(page, "{ eventTypes { name } }", auth)
        await result_containing(page, "job_application_created")
        # when a subscription replaces it in the editor and runs in the same moment (one page task)
        headers, query = json.dumps(json.dumps(auth)), json.dumps(SUBSCRIPTION)
        set_editors = SET_EDITORS % {"headers": headers, "query": query}
        await page.evaluate(f"({set_editors.strip()}) && ({RUN})")
        # then the subscription reaches the live feed over the WebSocket, and was never POSTed
        await wait_until(
            lambda: api.feed.subscriber_count(ATTEMPTS_CHANNEL, account.id) == 1,
            what="the subscription to reach the server",
        )
        assert not [body for body in posted if "deliveryAttempts" in body], posted
        await page.evaluate(RUN)  # stop it
        await wait_until(
            lambda: api.feed.subscriber_count(ATTEMPTS_CHANNEL, account.id) == 0,
            what="the subscription to end on the server",
        )


async def test_graphiql_subscription_with_a_refused_key_fails_at_once(browser_api: Api) -> None:
    origin = browser_api.url
    async with chromium() as browser:
        page = await browser.new_page(viewport=VIEWPORT)
        requests = Requests(page)
        await open_graphiql(page, origin)
        await run_in_graphiql(page, SUBSCRIPTION, {"Authorization": "Bearer not-a-key"})
        # at once: graphql-ws would otherwise retry 3 times with backoff (at least ~8 s in all)
        shown = await result_containing(page, "4403", timeout=5.0)
        (error,) = json.loads(shown)["errors"]
        assert "Authorization" in error["message"] and error["extensions"]["code"] == "WEBSOCKET_CLOSED"
        # a later, positive signal first: the page still answers, and opened no second socket meanwhile
        await asyncio.sleep(1.0)
        assert await page.title() == "HatchBeacon Webhooks · GraphiQL"
        assert len(requests.websockets()) == 1, requests.websockets()
        assert not requests.foreign(origin), requests.foreign(origin)


STORED = "JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage)])"


async def test_graphiql_keeps_the_api_key_out_of_the_browsers_storage(browser_api: Api) -> None:
    account = await browser_api.account()
    origin = browser_api.url
    async with chromium() as browser:
        page = await browser.new_page(viewport=VIEWPORT)
        await open_graphiql(page, origin)

        # when a query runs with the API key in the Headers pane
        query = "{ eventTypes { name } }"
        await run_in_graphiql(page, query, {"Authorization": f"Bearer {account.api_key}"})
        await result_containing(page, "job_application_created")
        # then GraphiQL's history has the query (it is kept for the next visit)...
        history = await poll(
            page, "localStorage.getItem('graphiql:queries')", "the query history to be saved"
        )
        assert query in [item["query"] for item in json.loads(history)["queries"]]
        # ...but no value in localStorage or sessionStorage holds the key
        assert account.api_key not in await page.evaluate(STORED)

        # and a key stored in the history by an earlier version of the page is gone once the page opens again
        leaked = {"queries": [{"query": query, "headers": json.dumps({"Authorization": "Bearer hbk_old"})}]}
        await page.evaluate("v => localStorage.setItem('graphiql:queries', v)", json.dumps(leaked))
        await open_graphiql(page, origin)
        stored = await page.evaluate(STORED)
        assert "hbk_old" not in stored and account.api_key not in stored
        assert query in [
            item["query"]
            for item in json.loads(await page.evaluate("localStorage.getItem('graphiql:queries')"))["queries"]
        ]
