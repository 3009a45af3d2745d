"""GraphiQL in a real browser: Debian's headless chromium, driven over the DevTools protocol (CDP) with a
raw ``websockets`` client, against the API over real HTTP.

Checks that the page loads and renders from this service alone (every request the browser makes goes to
``127.0.0.1:PORT``), that a query typed into the editor with the API key in the headers pane returns data
in the result pane, and that a subscription runs over a WebSocket (graphql-transport-ws, the headers pane
as connection_init payload): a ``testWebhook`` delivery's attempt shows up live in the result pane, and a
refused key ends the subscription at once with a readable error instead of reconnecting.

Set ``GRAPHIQL_SCREENSHOT=/path.png`` to save a screenshot of the page showing the subscription result.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from graphql_api import graphiql
from tests.conftest import make_settings
from tests.delivery_support import create_webhook
from tests.receiver import Receiver
from tests.support import missing_tool
from tests.test_subscriptions import TEST_WEBHOOK, Api, run_api
from webhooks.pubsub import ATTEMPTS_CHANNEL
from webhooks_cli.embedded import free_port

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-extensions",
    "--mute-audio",
    "--window-size=1400,1000",
)


def require_tools() -> None:
    if not Path(CHROMIUM).is_file():
        missing_tool("chromium is not installed (apt-get install -y chromium)")
    if not graphiql.assets_available():
        if shutil.which("npm") is None:
            missing_tool("the GraphiQL assets are not built and npm is missing to build them")
        assert graphiql.build_assets(ROOT), "building the GraphiQL assets with npm failed (see the log)"


# ----------------------------------------------------------------------------------------- browser


class Page:
    """One tab, spoken to over CDP: commands, and every network request it makes."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.requests: list[str] = []
        self.posted: list[str] = []  # bodies of the POST requests
        self.console: list[str] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                message = json.loads(raw)
                if "id" in message and message["id"] in self.pending:
                    self.pending.pop(message["id"]).set_result(message)
                elif message.get("method") == "Network.requestWillBeSent":
                    request = message["params"]["request"]
                    self.requests.append(request["url"])
                    if request.get("method") == "POST":
                        self.posted.append(request.get("postData", ""))
                elif message.get("method") == "Network.webSocketCreated":
                    self.requests.append(message["params"]["url"])
                elif message.get("method") == "Runtime.consoleAPICalled":
                    self.console.append(" ".join(str(a.get("value")) for a in message["params"]["args"]))

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[call_id] = future
        await self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        async with asyncio.timeout(30):
            reply = await future
        assert "error" not in reply, reply
        result: dict[str, Any] = reply["result"]
        return result

    async def eval(self, expression: str) -> Any:
        reply = await self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        assert "exceptionDetails" not in reply, reply["exceptionDetails"]
        return reply["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20.0, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = await self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or expression}; console: {self.console}")
            await asyncio.sleep(0.1)


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[int]:
    """Headless chromium with DevTools on a free port; yields the port."""
    port = free_port()
    proc = subprocess.Popen(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--remote-debugging-port={port}",
            "--remote-debugging-address=127.0.0.1",
            "about:blank",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.asynccontextmanager
async def open_page(devtools_port: int) -> AsyncIterator[Page]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{devtools_port}", timeout=5) as http:
        deadline = time.monotonic() + 30
        while True:
            try:
                targets = (await http.get("/json/list")).json()
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "chromium's DevTools endpoint did not come up"
            await asyncio.sleep(0.1)
    async with websockets.connect(pages[0]["webSocketDebuggerUrl"], max_size=None) as ws:
        page = Page(ws)
        await page.send("Network.enable")
        await page.send("Runtime.enable")
        await page.send("Page.enable")
        try:
            yield page
        finally:
            page.reader.cancel()


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
    await page.eval(
        SET_EDITORS % {"headers": json.dumps(json.dumps(headers, indent=2)), "query": json.dumps(query)}
    )
    await page.eval(RUN)


def result_containing(text: str) -> str:
    """An expression: the result pane's text once it contains ``text``, else false."""
    return f"(() => {{ const v = {RESULT}; return v.includes({json.dumps(text)}) && v; }})()"


def foreign_requests(page: Page, origin: str) -> list[str]:
    return [
        u
        for u in page.requests
        if urlsplit(u).scheme not in ("data", "blob", "about")
        and urlsplit(u).netloc != urlsplit(origin).netloc
    ]


def websockets_opened(page: Page) -> list[str]:
    return [u for u in page.requests if urlsplit(u).scheme in ("ws", "wss")]


async def wait_until(predicate: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def open_graphiql(page: Page, origin: str) -> None:
    await page.send("Page.navigate", url=f"{origin}/graphql")
    await page.wait_for(
        "!!document.querySelector('.graphiql-query-editor .CodeMirror')", what="GraphiQL to render"
    )


# --------------------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
async def browser_api(mongodb_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Api]:
    require_tools()
    settings = make_settings(mongodb_url, tmp_path_factory.mktemp("browser"))
    # A worker too: testWebhook's delivery is made by it, and its attempt reaches the live feed.
    async with run_api(settings, worker=True) as running:
        yield running


async def test_graphiql_runs_a_query_from_this_service_alone(browser_api: Api, tmp_path: Path) -> None:
    api = browser_api
    account = await api.account()
    origin = api.url  # http://127.0.0.1:PORT
    with chromium(tmp_path / "profile") as devtools_port:
        async with open_page(devtools_port) as page:
            # the page loads and GraphiQL renders
            await page.send("Page.navigate", url=f"{origin}/graphql")
            await page.wait_for(
                "!!document.querySelector('.graphiql-query-editor .CodeMirror')", what="GraphiQL to render"
            )
            assert await page.eval("document.title") == "HatchBeacon Webhooks · GraphiQL"
            # a query with the API key in the headers pane shows its result in the result pane
            auth = {"Authorization": f"Bearer {account.api_key}"}
            await run_in_graphiql(page, "{ eventTypes { name } }", auth)
            shown = await page.wait_for(
                f"(() => {{ const v = {RESULT}; return v.includes('job_application_created') && v; }})()",
                what="the query result",
            )
            names = [t["name"] for t in json.loads(shown)["data"]["eventTypes"]]
            assert "job_application_created" in names
            # nothing was requested from any other host
            foreign = [
                u
                for u in page.requests
                if urlsplit(u).scheme not in ("data", "blob", "about")
                and urlsplit(u).netloc != urlsplit(origin).netloc
            ]
            assert page.requests and not foreign, foreign


SUBSCRIPTION = "subscription { deliveryAttempts { number statusCode deliveryStatus } }"


async def test_graphiql_runs_a_subscription_over_a_websocket(
    browser_api: Api, receiver: Receiver, tmp_path: Path
) -> None:
    api = browser_api
    account = await api.account()
    webhook_id, _ = await create_webhook(account.gql, receiver.url(f"/graphiql/{uuid.uuid4().hex[:8]}"))
    origin = api.url
    auth = {"Authorization": f"Bearer {account.api_key}"}
    with chromium(tmp_path / "profile") as devtools_port:
        async with open_page(devtools_port) as page:
            await open_graphiql(page, origin)
            # the subscription, with the key in the headers pane, is registered with the live feed
            await run_in_graphiql(page, SUBSCRIPTION, auth)
            await wait_until(
                lambda: api.feed.subscriber_count(ATTEMPTS_CHANNEL, account.id) == 1,
                what="the subscription to reach the server",
            )
            assert [urlsplit(u).path for u in websockets_opened(page)] == ["/graphql"]
            # a delivery made meanwhile shows up in the result pane
            tested = (await account.gql.execute(TEST_WEBHOOK, {"id": webhook_id}))["testWebhook"]
            assert tested["errors"] == [], tested
            shown = await page.wait_for(result_containing("deliveryAttempts"), what="the live attempt")
            assert json.loads(shown) == {
                "data": {"deliveryAttempts": {"number": 1, "statusCode": 200, "deliveryStatus": "SUCCEEDED"}}
            }
            if target := os.environ.get("GRAPHIQL_SCREENSHOT"):
                shot = await page.send("Page.captureScreenshot", format="png")
                await asyncio.to_thread(Path(target).write_bytes, base64.b64decode(shot["data"]))
            # the subscription never went over HTTP; stopping it in GraphiQL ends it on the server
            assert not [body for body in page.posted if "deliveryAttempts" in body], page.posted
            await page.eval(RUN)  # the execute button is the stop button while a subscription runs
            await wait_until(
                lambda: api.feed.subscriber_count(ATTEMPTS_CHANNEL, account.id) == 0,
                what="the subscription to end on the server",
            )
            assert page.requests and not foreign_requests(page, origin), foreign_requests(page, origin)


async def test_graphiql_subscription_with_a_refused_key_fails_at_once(
    browser_api: Api, tmp_path: Path
) -> None:
    origin = browser_api.url
    with chromium(tmp_path / "profile") as devtools_port:
        async with open_page(devtools_port) as page:
            await open_graphiql(page, origin)
            await run_in_graphiql(page, SUBSCRIPTION, {"Authorization": "Bearer not-a-key"})
            # at once: graphql-ws would otherwise retry 3 times with backoff (at least ~8 s in all)
            shown = await page.wait_for(result_containing("4403"), timeout=5.0, what="the refusal")
            (error,) = json.loads(shown)["errors"]
            assert "Authorization" in error["message"] and error["extensions"]["code"] == "WEBSOCKET_CLOSED"
            await asyncio.sleep(1.0)
            assert len(websockets_opened(page)) == 1, websockets_opened(page)
            assert not foreign_requests(page, origin), foreign_requests(page, origin)
