"""The customer portal in a real browser (Playwright driving Debian's chromium) against the real stack: the
API over real HTTP and WebSocket, a real worker, SecantusDB, Redis and a real receiver.

The whole flow of Settings → Webhooks runs in the page, in the spec's order, with axe-core on every
screen; screenshots are kept in ``test-artifacts/``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from playwright.async_api import Page, Request, Route, ViewportSize, expect

from tests.browser import Requests, check_accessibility, chromium, require_tools, screenshot
from tests.conftest import make_settings
from tests.delivery_support import (
    create_webhook,
    publish,
    until_disabled,
    wait_for_attempt_count,
    wait_for_status,
)
from tests.receiver import Receiver, ok, status
from tests.support import Account, GraphQLClient, run_worker, serve_asgi
from tests.test_subscriptions import Api, run_api
from webhooks.core import open_core
from webhooks.models import Scope
from webhooks_cli.embedded import free_port

SESSION = """mutation($ttl: Int) { createPortalSession(ttlMinutes: $ttl) {
  url token expiresAt errors { field code message } } }"""
WEBHOOKS = "{ webhooks { edges { node { id } } } }"
RETRY = "mutation($id: ID!) { retryDelivery(id: $id) { delivery { id } errors { message } } }"
CREATE_WEBHOOK = "mutation($input: CreateWebhookInput!) { createWebhook(input: $input) { errors { code } } }"
# the WebSocket connects after the page has loaded and authenticated: slow on a loaded 2-core machine
LIVE_TIMEOUT = 45_000
DESKTOP = ViewportSize(width=1440, height=900)
PHONE = ViewportSize(width=375, height=740)


def signature(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def portal_url(account: Account, ttl: int = 60) -> dict[str, Any]:
    created: dict[str, Any] = (await account.gql.execute(SESSION, {"ttl": ttl}))["createPortalSession"]
    assert created["errors"] == [], created
    return created


async def no_horizontal_scroll(page: Page) -> None:
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert page.viewport_size is not None
    assert width <= page.viewport_size["width"], width


@pytest.fixture(scope="module")
async def stack(mongodb_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Api]:
    require_tools()
    settings = make_settings(
        mongodb_url,
        tmp_path_factory.mktemp("portal"),
        retry_schedule=(0.0,),  # one attempt per delivery: a failing receiver fails deliveries at once
        disable_after_failures=2,
    )
    async with run_api(settings, worker=True) as running:
        yield running


async def test_the_whole_portal_flow_in_a_browser(stack: Api, receiver: Receiver) -> None:
    account = await stack.account()
    path = f"/portal/{uuid.uuid4().hex[:8]}"
    receiver_url = receiver.url(path)

    # 1. the product's backend creates a session with its API key; the token is in the URL fragment
    session = await portal_url(account)
    assert session["url"] == f"{stack.url}/portal#token={session['token']}"

    async with chromium() as browser:
        context = await browser.new_context(viewport=DESKTOP)
        await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=stack.url)
        page = await context.new_page()
        await page.clock.install()
        requests = Requests(page)
        problems: list[str] = []  # console errors (CSP violations among them) and uncaught exceptions
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        await page.goto(session["url"])
        heading = page.get_by_role("heading", name="Webhooks", level=1)
        await expect(heading).to_be_focused()
        await expect(page.get_by_test_id("live-status")).to_have_text("Live updates on", timeout=LIVE_TIMEOUT)
        # the token left the address bar; it is in sessionStorage only
        assert "token" not in page.url
        assert await page.evaluate("localStorage.length") == 0
        assert session["token"] in await page.evaluate("JSON.stringify(sessionStorage)")
        await expect(page.get_by_text("No webhooks yet.")).to_be_visible()
        await check_accessibility(page, "portal-01-list-empty")

        # 2. add a webhook: the server's own validation error shows on the URL field
        await page.get_by_role("button", name="Add Webhook").click()
        await expect(page.get_by_role("heading", name="Add Webhook", level=1)).to_be_focused()
        await page.get_by_label("Name").fill("Portal receiver")
        url_field = page.get_by_label("Endpoint URL")
        await url_field.fill("ftp://example.com/hook")
        event = page.get_by_role("checkbox", name="job_application_created")
        await expect(event).to_have_accessible_description(re.compile(r"\w"))  # the event's description
        await event.check()
        await page.get_by_role("button", name="Create webhook").click()
        await expect(url_field).to_have_attribute("aria-invalid", "true")
        await expect(url_field).to_be_focused()
        await expect(url_field).to_have_accessible_description(re.compile("url"))
        await check_accessibility(page, "portal-02-add-webhook-invalid-url")
        # select all checks every event, and unchecks them again
        await page.get_by_label("Select all").check()
        events = page.locator(".events input[type=checkbox]")
        assert await events.count() == 20
        for i in range(20):
            await expect(events.nth(i)).to_be_checked()
        await page.get_by_label("Select all").uncheck()
        await event.check()
        await url_field.fill(receiver_url)
        await page.get_by_role("button", name="Create webhook").click()

        # 3. the secret is shown once, with Copy; a delivery's signature verifies with it
        secret_field = page.get_by_label("Signing secret", exact=True)
        await expect(secret_field).to_have_value(re.compile("^whsec_"))
        secret = await secret_field.input_value()
        await expect(page.get_by_text("It will not be shown again.")).to_be_visible()
        await page.get_by_role("button", name="Copy").click()
        await expect(page.get_by_text("Copied to the clipboard.")).to_be_visible()
        assert await page.evaluate("navigator.clipboard.readText()") == secret
        await check_accessibility(page, "portal-03-secret")
        await page.get_by_role("button", name="I have copied the secret: continue").click()
        await expect(page.get_by_role("heading", name="Portal receiver", level=1)).to_be_focused()

        # 4. Test: the attempt's result appears live (status, duration, response body)
        await page.get_by_role("button", name="Test", exact=True).click()
        result = page.get_by_test_id("test-result")
        await expect(result).to_contain_text("Test succeeded: HTTP 200 in")
        await expect(result).to_contain_text("OK")
        (tested,) = await receiver.wait_for(path, 1)
        assert tested.headers["X-Webhook-Signature"] == signature(secret, tested.body)
        await check_accessibility(page, "portal-04-test-result")

        # 5. the backend publishes: the delivery and its attempt appear in the log without reload
        published = await publish(account.gql)
        (delivery,) = published["event"]["deliveries"]
        row = page.locator(f'[data-delivery="{delivery["id"]}"]')
        await expect(row).to_contain_text("job_application_created")
        await expect(row).to_contain_text("succeeded")
        await row.get_by_role("button", name="Details").click()
        await expect(row).to_contain_text("Attempt 1")
        await expect(row).to_contain_text("HTTP 200")
        await expect(row).to_contain_text("Request headers (signatures redacted)")
        assert signature(secret, (await receiver.wait_for(path, 2))[1].body) not in await row.inner_text()
        await check_accessibility(page, "portal-05-delivery-details")

        # 6. the receiver fails: failed deliveries, then the webhook is disabled, live
        receiver.behaviours[path] = status(500)
        failed = await publish(account.gql)
        failed_id = failed["event"]["deliveries"][0]["id"]
        await expect(page.locator(f'[data-delivery="{failed_id}"]')).to_contain_text("failed")
        await publish(account.gql)
        facts = page.locator("dl.meta")
        await expect(facts).to_contain_text("Disabled")
        await expect(facts).to_contain_text("consecutive failed deliveries")
        await expect(facts).to_contain_text(re.compile(r"Failures in a row\s*2"))
        await expect(page.get_by_role("button", name="Enable")).to_be_visible()
        await check_accessibility(page, "portal-06-disabled")

        # 7. retry: the receiver recovers, the webhook is enabled again, a failed delivery is retried
        receiver.behaviours[path] = ok
        await page.get_by_role("button", name="Enable").click()
        await expect(facts).to_contain_text("Enabled")
        failed_row = page.locator(f'[data-delivery="{failed_id}"]')
        await failed_row.get_by_role("button", name="Retry").click()
        await expect(failed_row).to_contain_text("succeeded")
        await expect(failed_row).to_contain_text("2 attempts")

        # 8. rotate the secret: a dialog, then the new secret once; the next delivery is signed with it
        rotate = page.get_by_role("button", name="Rotate secret")
        await rotate.click()
        dialog = page.get_by_role("dialog", name="Rotate the signing secret?")
        await expect(dialog.get_by_label("Grace period (hours, 0 to 168)")).to_be_focused()
        await check_accessibility(page, "portal-08-rotate-dialog")
        await dialog.get_by_role("button", name="Rotate secret").click()
        await expect(dialog).to_be_hidden()
        await expect(page.get_by_role("heading", name="New signing secret")).to_be_focused()
        new_secret = await page.get_by_label("Signing secret", exact=True).input_value()
        assert new_secret.startswith("whsec_") and new_secret != secret
        before = len(receiver.received[path])
        await page.get_by_role("button", name="Test", exact=True).click()
        await expect(result).to_contain_text("Test succeeded")
        rotated = (await receiver.wait_for(path, before + 1))[before]
        assert rotated.headers["X-Webhook-Signature"] == signature(new_secret, rotated.body)
        await check_accessibility(page, "portal-08-new-secret")
        await page.get_by_role("button", name="I have copied the new secret").click()

        # 9. disable
        await page.get_by_role("button", name="Disable").click()
        await expect(page.get_by_test_id("message")).to_have_text("Webhook disabled.")
        await expect(facts).to_contain_text("Disabled")

        # 10. delete, with a confirmation; Escape cancels and gives focus back
        delete = page.get_by_role("button", name="Delete", exact=True)
        await delete.click()
        confirm = page.get_by_role("dialog", name="Delete this webhook?")
        await expect(confirm.get_by_role("button", name="Cancel")).to_be_focused()
        await check_accessibility(page, "portal-10-delete-dialog")
        await page.keyboard.press("Escape")
        await expect(confirm).to_be_hidden()
        await expect(delete).to_be_focused()
        await delete.click()
        await confirm.get_by_role("button", name="Delete webhook").click()
        await expect(page.get_by_role("heading", name="Webhooks", level=1)).to_be_focused()
        await expect(page.get_by_text("No webhooks yet.")).to_be_visible()
        assert (await account.gql.execute(WEBHOOKS))["webhooks"]["edges"] == []

        # 11. the session expires: a clear screen, and the token is gone from the browser
        await page.clock.fast_forward("01:00:01")
        await expect(page.get_by_role("heading", name="Session expired", level=1)).to_be_visible()
        assert await page.evaluate("sessionStorage.length + localStorage.length") == 0
        await check_accessibility(page, "portal-11-expired")
        await page.reload()
        await expect(page.get_by_role("heading", name="No session", level=1)).to_be_visible()

        # every request went to this service: no CDN, nothing external; nothing broke the CSP or the page
        assert requests.urls and not requests.foreign(stack.url), requests.foreign(stack.url)
        assert problems == [], problems
        assert {u.split("?")[0] for u in requests.websockets()} == {
            stack.url.replace("http", "ws") + "/graphql"
        }


async def test_the_portal_at_375_px_in_the_dark_theme_recovers_failed_deliveries(
    stack: Api, receiver: Receiver
) -> None:
    # given a webhook whose receiver failed two deliveries (and so was disabled), then recovered
    account = await stack.account()
    path = f"/phone/{uuid.uuid4().hex[:8]}"
    webhook_id, _ = await create_webhook(account.gql, receiver.url(path, status(503)), name="Phone receiver")
    for _ in range(2):
        await publish(account.gql)
    await until_disabled(account.gql, webhook_id)
    receiver.behaviours[path] = ok
    session = await portal_url(account)
    async with chromium() as browser:
        page = await browser.new_page(viewport=PHONE)
        await page.goto(session["url"].replace("/portal#", "/portal?theme=dark#"))
        assert await page.evaluate("document.documentElement.dataset.theme") == "dark"
        card = page.get_by_role("listitem").filter(has_text="Phone receiver")
        await expect(card).to_contain_text("Disabled")
        await no_horizontal_scroll(page)
        await check_accessibility(page, "portal-phone-list-dark")

        # when the customer opens it, enables it, counts what "recover failed since…" would send, and recovers
        await page.get_by_role("button", name="Phone receiver").click()
        await expect(page.get_by_role("heading", name="Phone receiver", level=1)).to_be_focused()
        await page.get_by_role("button", name="Enable").click()
        await expect(page.locator("dl.meta")).to_contain_text("Enabled")
        await page.get_by_label("Status", exact=True).select_option("FAILED")
        log = page.get_by_role("list", name="Deliveries")
        await expect(log.get_by_role("listitem")).to_have_count(2)
        await page.get_by_role("button", name="Count").click()
        await expect(
            page.get_by_text("2 failed or held deliveries since then would be sent again.")
        ).to_be_visible()
        await no_horizontal_scroll(page)
        await check_accessibility(page, "portal-phone-detail-dark")
        await page.get_by_role("button", name="Recover 2 deliveries").click()
        await expect(page.get_by_text("2 deliveries are being sent again.")).to_be_visible()

        # then both are delivered (the filter shows none failed once the attempts arrive live)
        await receiver.wait_for(path, 4)
        await page.get_by_label("Status", exact=True).select_option("SUCCEEDED")
        await expect(log.get_by_role("listitem")).to_have_count(2)
        await screenshot(page, "portal-phone-recovered-dark")

        # and edits it: the form comes back filled in, and saving shows the new name
        await page.get_by_role("button", name="Edit").click()
        await expect(page.get_by_role("heading", name="Edit Phone receiver", level=1)).to_be_focused()
        await expect(page.get_by_role("checkbox", name="job_application_created")).to_be_checked()
        await page.get_by_label("Name").fill("Phone receiver v2")
        await no_horizontal_scroll(page)
        await check_accessibility(page, "portal-phone-edit-dark")
        await page.get_by_role("button", name="Save changes").click()
        await expect(page.get_by_role("heading", name="Phone receiver v2", level=1)).to_be_focused()
        await expect(page.get_by_test_id("message")).to_have_text("Changes saved.")
        webhook = (
            await account.gql.execute(
                "query($id: ID!) { webhook(id: $id) { consecutiveFailures } }", {"id": webhook_id}
            )
        )["webhook"]
        assert webhook == {"consecutiveFailures": 0}


async def test_without_a_session_the_portal_says_where_to_open_it(stack: Api) -> None:
    async with chromium() as browser:
        page = await browser.new_page(viewport=DESKTOP)
        requests = Requests(page)
        await page.goto(f"{stack.url}/portal")
        await expect(page.get_by_role("heading", name="No session", level=1)).to_be_visible()
        await check_accessibility(page, "portal-no-session")
        # an API key in the fragment is not a session: refused and not kept
        account = await stack.account()
        await page.goto(f"{stack.url}/portal#token={account.api_key}")
        await page.reload()
        await expect(page.get_by_role("heading", name="No session", level=1)).to_be_visible()
        assert await page.evaluate("sessionStorage.length") == 0
        assert not requests.websockets()


@contextlib.asynccontextmanager
async def restartable_api(settings: object, port: int) -> AsyncIterator[str]:
    from graphql_api.app import create_app

    async with serve_asgi(create_app(settings), port=port) as url:  # type: ignore[arg-type]
        yield url


async def test_the_portal_reconnects_after_the_api_restarts_and_catches_up(
    mongodb_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    require_tools()
    settings = make_settings(mongodb_url, tmp_path, retry_schedule=(0.0,))
    port = free_port()
    async with contextlib.AsyncExitStack() as stack:
        core = await stack.enter_async_context(open_core(settings))
        await stack.enter_async_context(run_worker(settings))
        # a second API process, for the backend while the page's one is down
        backend_url = await stack.enter_async_context(restartable_api(settings, free_port()))
        backend = await stack.enter_async_context(httpx.AsyncClient(base_url=backend_url, timeout=30))
        account_id = await core.accounts.create("acct")
        gql = GraphQLClient(backend, await core.api_keys.issue(account_id, frozenset(Scope)))
        account = Account(id=str(account_id), api_key=gql.api_key or "", gql=gql)
        path = f"/restart/{uuid.uuid4().hex[:8]}"
        await create_webhook(gql, receiver.url(path), name="Restart receiver")
        session = await portal_url(account)
        page_url = session["url"].replace(backend_url, f"http://127.0.0.1:{port}")
        browser = await stack.enter_async_context(chromium())
        page = await browser.new_page(viewport=DESKTOP)
        live = page.get_by_test_id("live-status")

        # given the portal open on a webhook, live
        async with restartable_api(settings, port):
            await page.goto(page_url)
            await page.get_by_role("button", name="Restart receiver").click()
            await expect(live).to_have_text("Live updates on", timeout=LIVE_TIMEOUT)
            await expect(page.get_by_text("No deliveries match.")).to_be_visible()
        # when its API process goes away, the page says so, and a delivery happens meanwhile
        await expect(live).to_contain_text("Connection lost: reconnecting.")
        await check_accessibility(page, "portal-reconnecting")
        missed = (await publish(gql))["event"]["deliveries"][0]["id"]
        await receiver.wait_for(path, 1)
        # then, once it is back, the page reconnects and re-queries: the missed delivery is listed
        async with restartable_api(settings, port):
            await expect(live).to_contain_text("reconnected and refreshed", timeout=20_000)
            row = page.locator(f'[data-delivery="{missed}"]')
            await expect(row).to_contain_text("succeeded")
            await screenshot(page, "portal-reconnected")
            # and it is live again
            again = (await publish(gql))["event"]["deliveries"][0]["id"]
            await expect(page.locator(f'[data-delivery="{again}"]')).to_contain_text("succeeded")


def product_site(portal: str) -> contextlib.AbstractAsyncContextManager[str]:
    return product_site_on(free_port(), portal)


@contextlib.asynccontextmanager
async def product_site_on(port: int, portal: str) -> AsyncIterator[str]:
    """A real page of another origin (``localhost``, where the API is ``127.0.0.1``) that embeds ``portal``
    in an iframe; yields its origin."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    html = f'<!doctype html><html lang="en"><title>Product</title><iframe title="Webhooks" src="{portal}">'
    html += "</iframe>"

    async def settings_page(request: object) -> HTMLResponse:
        return HTMLResponse(html)

    async with serve_asgi(Starlette(routes=[Route("/settings", settings_page)]), port=port):
        yield f"http://localhost:{port}"


async def test_by_default_another_site_cannot_embed_the_portal(stack: Api) -> None:
    account = await stack.account()
    session = await portal_url(account)
    async with chromium() as browser, product_site(session["url"]) as origin:
        page = await browser.new_page(viewport=DESKTOP)
        # the browser refuses the frame (the same page embeds fine from a listed origin: next test)
        blocked = lambda frame: frame.url.startswith("chrome-error://")  # noqa: E731
        async with page.expect_event("framenavigated", blocked, timeout=10_000):
            await page.goto(f"{origin}/settings")
        await expect(page.frame_locator("iframe").get_by_role("heading", name="Webhooks")).to_have_count(0)


async def test_a_site_listed_in_the_setting_embeds_the_portal(
    mongodb_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    require_tools()
    port = free_port()
    settings = make_settings(mongodb_url, tmp_path, portal_frame_ancestors=f"'self' http://localhost:{port}")
    async with run_api(settings, worker=False) as api, chromium() as browser:
        account = await api.account()
        await create_webhook(account.gql, receiver.url("/embedded"), name="Embedded receiver")
        session = await portal_url(account)
        page = await browser.new_page(viewport=DESKTOP)
        async with product_site_on(port, session["url"]) as origin:
            await page.goto(f"{origin}/settings")
            frame = page.frame_locator("iframe")
            await expect(frame.get_by_role("button", name="Embedded receiver")).to_be_visible()
            await expect(frame.get_by_test_id("live-status")).to_have_text(
                "Live updates on", timeout=LIVE_TIMEOUT
            )
            await screenshot(page, "portal-embedded")

            # and "End session" ends it for the API too
            await frame.get_by_role("button", name="End session").click()
            await expect(frame.get_by_role("heading", name="Session expired")).to_be_visible()
        refused = await GraphQLClient(api.http, session["token"]).raw(WEBHOOKS)
        assert refused["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_the_delivery_log_pages_with_a_cursor_and_filters_by_event(
    stack: Api, receiver: Receiver
) -> None:
    # given 21 deliveries of one event and one of another
    account = await stack.account()
    path = f"/pages/{uuid.uuid4().hex[:8]}"
    await create_webhook(
        account.gql, receiver.url(path), events=["JOB_CREATED", "JOB_CLOSED"], name="Busy receiver"
    )
    for _ in range(21):
        await publish(account.gql, event="JOB_CREATED")
    await publish(account.gql, event="JOB_CLOSED")
    await receiver.wait_for(path, 22)
    session = await portal_url(account)
    async with chromium() as browser:
        page = await browser.new_page(viewport=DESKTOP)
        await page.goto(session["url"])
        await page.get_by_role("button", name="Busy receiver").click()
        rows = page.get_by_role("list", name="Deliveries").get_by_role("listitem")
        # the first page has 20, newest first; the next page comes from the cursor
        await expect(rows).to_have_count(20)
        await expect(rows.first).to_contain_text("job_closed")
        await page.get_by_role("button", name="Load older deliveries").click()
        await expect(rows).to_have_count(22)
        await expect(page.get_by_role("button", name="Load older deliveries")).to_have_count(0)
        # the event filter asks the server for that event only
        await page.get_by_label("Event", exact=True).select_option("job_closed")
        await expect(rows).to_have_count(1)
        await check_accessibility(page, "portal-log-filtered")


async def focus_ring(page: Page) -> str:
    """The focused element's outline, as drawn (keyboard focus must be visible)."""
    style: str = await page.evaluate(
        "(() => { const s = getComputedStyle(document.activeElement);"
        " return s.outlineStyle + ' ' + s.outlineWidth; })()"
    )
    return style


async def test_adding_a_webhook_works_with_the_keyboard_alone_and_focus_stays_visible(
    stack: Api, receiver: Receiver
) -> None:
    account = await stack.account()
    session = await portal_url(account)
    async with chromium() as browser:
        page = await browser.new_page(viewport=DESKTOP)
        await page.goto(session["url"])
        await expect(page.get_by_role("heading", name="Webhooks", level=1)).to_be_focused()
        # Tab from the heading reaches "Add Webhook", with a visible focus ring
        await page.keyboard.press("Tab")
        add = page.get_by_role("button", name="Add Webhook")
        await expect(add).to_be_focused()
        assert (await focus_ring(page)).startswith("solid")
        await page.keyboard.press("Enter")
        await expect(page.get_by_role("heading", name="Add Webhook", level=1)).to_be_focused()
        await page.keyboard.press("Tab")
        await expect(page.get_by_label("Name")).to_be_focused()
        await page.keyboard.type("Keyboard receiver")
        await page.keyboard.press("Tab")
        await expect(page.get_by_label("Endpoint URL")).to_be_focused()
        await page.keyboard.type(receiver.url("/keyboard"))
        await page.keyboard.press("Tab")
        await expect(page.get_by_label("Select all")).to_be_focused()
        assert (await focus_ring(page)).startswith("solid")
        await page.keyboard.press("Space")
        await expect(page.get_by_label("Select all")).to_be_checked()
        # Enter in a field submits the form; the secret screen takes focus
        await page.keyboard.press("Shift+Tab")
        await page.keyboard.press("Enter")
        await expect(page.get_by_role("heading", name="Signing secret for Keyboard receiver")).to_be_focused()
        await page.keyboard.press("Tab")
        await expect(page.get_by_label("Signing secret", exact=True)).to_be_focused()
        await page.keyboard.press("Tab")
        await expect(page.get_by_role("button", name="Copy")).to_be_focused()
        webhooks = (await account.gql.execute("{ webhooks { edges { node { name events } } } }"))["webhooks"]
        assert [e["node"]["name"] for e in webhooks["edges"]] == ["Keyboard receiver"]
        assert len(webhooks["edges"][0]["node"]["events"]) == 20


# ------------------------------------------------------------------- slow answers, failures, races


def variables(body: str | None) -> dict[str, Any]:
    """The variables of a GraphQL request the page POSTed."""
    try:
        found: dict[str, Any] = json.loads(body or "{}").get("variables") or {}
    except ValueError:
        return {}
    return found


class Held:
    """A slow network for some of the page's GraphQL requests: those ``wanted`` picks get their answer only
    once ``release()`` is called (the others are answered as usual)."""

    def __init__(self, wanted: Callable[[dict[str, Any]], bool]) -> None:
        self.wanted = wanted
        self.requests: list[dict[str, Any]] = []
        self._released = asyncio.Event()

    async def install(self, page: Page) -> None:
        await page.route("**/graphql", self._handle)

    async def _handle(self, route: Route) -> None:
        found = variables(route.request.post_data)
        if self.wanted(found):
            self.requests.append(found)
            await self._released.wait()
        await route.continue_()

    async def release(self, page: Page) -> None:
        """Let the held requests through; returns once the page has received their answers."""
        left = len(self.requests)
        finished = asyncio.Event()

        def answered(request: Request) -> None:
            nonlocal left
            if self.wanted(variables(request.post_data)):
                left -= 1
                if left <= 0:
                    finished.set()

        page.on("requestfinished", answered)
        self._released.set()
        if left:
            await asyncio.wait_for(finished.wait(), timeout=30)
        page.remove_listener("requestfinished", answered)
        await page.unroute("**/graphql", self._handle)


async def busy_webhook(
    stack: Api, receiver: Receiver, name: str, delivered: int, then_failed: int = 0
) -> tuple[Account, list[str]]:
    """An account whose webhook ``name`` has ``delivered`` succeeded deliveries, then ``then_failed`` failed
    ones (newest); returns the account and the delivery ids, oldest first."""
    account = await stack.account()
    path = f"/busy/{uuid.uuid4().hex[:8]}"
    await create_webhook(account.gql, receiver.url(path), name=name)
    ids = [(await publish(account.gql))["event"]["deliveries"][0]["id"] for _ in range(delivered)]
    for delivery_id in ids:
        await wait_for_status(account.gql, delivery_id, "SUCCEEDED")
    receiver.behaviours[path] = status(500)
    failed = [(await publish(account.gql))["event"]["deliveries"][0]["id"] for _ in range(then_failed)]
    for delivery_id in failed:
        await wait_for_status(account.gql, delivery_id, "FAILED")
    receiver.behaviours[path] = ok
    return account, ids + failed


async def listed(page: Page) -> list[str]:
    """The delivery ids in the log, top to bottom."""
    ids: list[str] = await page.locator("[data-delivery]").evaluate_all(
        "rows => rows.map(row => row.dataset.delivery)"
    )
    return ids


async def test_a_live_attempt_of_an_older_delivery_is_listed_once_in_its_place(
    stack: Api, receiver: Receiver
) -> None:
    # given a webhook with 22 deliveries, whose log shows the newest 20
    account, ids = await busy_webhook(stack, receiver, "Paged receiver", 22)
    session = await portal_url(account)
    async with chromium() as browser:
        page = await browser.new_page(viewport=DESKTOP)
        await page.goto(session["url"])
        await page.get_by_role("button", name="Paged receiver").click()
        rows = page.get_by_role("list", name="Deliveries").get_by_role("listitem")
        await expect(rows).to_have_count(20)
        await expect(page.get_by_test_id("live-status")).to_have_text("Live updates on", timeout=LIVE_TIMEOUT)

        # when the oldest delivery (not on the page) is retried, then the newest one, both live
        oldest, newest = ids[0], ids[-1]
        assert (await account.gql.execute(RETRY, {"id": oldest}))["retryDelivery"]["errors"] == []
        await wait_for_attempt_count(account.gql, oldest, 2)
        assert (await account.gql.execute(RETRY, {"id": newest}))["retryDelivery"]["errors"] == []
        await expect(page.locator(f'[data-delivery="{newest}"]')).to_contain_text("2 attempts")

        # then the log still starts with the newest delivery: the older one was not put on top as new
        await expect(rows).to_have_count(20)
        assert await listed(page) == ids[::-1][:20]
        # and "Load older deliveries" lists the rest once each, in place, the retried one with 2 attempts
        await page.get_by_role("button", name="Load older deliveries").click()
        await expect(rows).to_have_count(22)
        assert await listed(page) == ids[::-1]
        await expect(page.locator(f'[data-delivery="{oldest}"]')).to_contain_text("2 attempts")


async def test_double_clicking_load_more_lists_the_next_page_once(stack: Api, receiver: Receiver) -> None:
    # given 21 webhooks (the oldest, on the second page, with 22 deliveries): one page and one more of each
    account, ids = await busy_webhook(stack, receiver, "Paged receiver", 22)
    for n in range(20):
        other = {"name": f"Other {n}", "url": receiver.url(f"/other/{n}"), "events": ["JOB_CLOSED"]}
        created = await account.gql.execute(CREATE_WEBHOOK, {"input": other})
        assert created["createWebhook"]["errors"] == [], created
    session = await portal_url(account)
    async with chromium() as browser:
        page = await browser.new_page(viewport=DESKTOP)
        await page.goto(session["url"])
        cards = page.get_by_role("list", name="Webhooks").get_by_role("listitem")
        await expect(cards).to_have_count(20)

        # when the customer double-clicks "Load more webhooks" on a slow network
        held = Held(lambda v: bool(v.get("after")))
        await held.install(page)
        more = page.get_by_role("button", name="Load more webhooks")
        await more.dblclick()
        # then the button is disabled while the page loads, and the next webhook is listed once
        await expect(more).to_be_disabled()
        await held.release(page)
        await expect(more).to_have_count(0)
        await expect(cards).to_have_count(21)
        await expect(page.get_by_role("button", name="Paged receiver")).to_have_count(1)
        assert len(held.requests) == 1, held.requests

        # and the same for "Load older deliveries"
        await page.get_by_role("button", name="Paged receiver").click()
        rows = page.get_by_role("list", name="Deliveries").get_by_role("listitem")
        await expect(rows).to_have_count(20)
        held = Held(lambda v: bool(v.get("after")))
        await held.install(page)
        older = page.get_by_role("button", name="Load older deliveries")
        await older.dblclick()
        await expect(older).to_be_disabled()
        await held.release(page)
        await expect(older).to_have_count(0)
        await expect(rows).to_have_count(22)
        assert await listed(page) == ids[::-1]
        assert len(held.requests) == 1, held.requests


async def test_a_slow_answer_for_an_earlier_filter_does_not_replace_the_log(
    stack: Api, receiver: Receiver
) -> None:
    # given a webhook with 21 succeeded deliveries and, newest, a failed one
    account, ids = await busy_webhook(stack, receiver, "Filtered receiver", 21, then_failed=1)
    session = await portal_url(account)
    async with chromium() as browser:
        page = await browser.new_page(viewport=DESKTOP)
        await page.goto(session["url"])
        await page.get_by_role("button", name="Filtered receiver").click()
        rows = page.get_by_role("list", name="Deliveries").get_by_role("listitem")
        await expect(rows).to_have_count(20)
        await expect(rows.first).to_contain_text("failed")
        status_filter = page.get_by_label("Status", exact=True)

        # when the customer picks "failed", whose answer is slow, then "succeeded" at once
        held = Held(lambda v: v.get("status") == "FAILED")
        await held.install(page)
        await status_filter.select_option("FAILED")
        await status_filter.select_option("SUCCEEDED")
        await expect(rows.first).to_contain_text("succeeded")
        await expect(rows).to_have_count(20)
        # and the slow answer for "failed" comes in after that
        await held.release(page)
        await rows.first.get_by_role("button", name="Details").click()
        await expect(rows.first).to_contain_text("Attempt 1")
        # then the log still shows the succeeded deliveries only
        await expect(status_filter).to_have_value("SUCCEEDED")
        await expect(rows).to_have_count(20)
        await expect(rows.filter(has_text="failed")).to_have_count(0)

        # when older deliveries are on their way (slow) and the customer picks "failed" meanwhile
        held = Held(lambda v: bool(v.get("after")))
        await held.install(page)
        await page.get_by_role("button", name="Load older deliveries").click()
        await status_filter.select_option("FAILED")
        await expect(rows).to_have_count(1)
        await held.release(page)
        await rows.first.get_by_role("button", name="Details").click()
        await expect(rows.first).to_contain_text("Attempt 1")
        # then the older succeeded deliveries are not added to the failed ones
        await expect(rows).to_have_count(1)
        assert await listed(page) == [ids[-1]]


async def test_a_webhook_that_cannot_be_loaded_says_so_and_offers_retry_and_a_way_back(
    stack: Api, receiver: Receiver
) -> None:
    # given a webhook, and a network that fails the page's query for it (a 502 from a proxy)
    account = await stack.account()
    await create_webhook(account.gql, receiver.url("/flaky"), name="Flaky receiver")
    session = await portal_url(account)
    failing = True

    async def bad_gateway(route: Route) -> None:
        body = route.request.post_data or ""
        if failing and "{ webhook(id: $id)" in body:
            await route.fulfill(status=502, body="<html>Bad gateway</html>", content_type="text/html")
        else:
            await route.continue_()

    async with chromium() as browser:
        page = await browser.new_page(viewport=DESKTOP)
        await page.goto(session["url"])
        await page.route("**/graphql", bad_gateway)

        # when the customer opens it
        await page.get_by_role("button", name="Flaky receiver").click()
        # then the page says it could not be loaded, why, and offers Retry and the way back
        failed = page.get_by_role("heading", name="The webhook could not be loaded", level=1)
        await expect(failed).to_be_focused()
        await expect(page.get_by_role("alert")).to_contain_text("HTTP 502")
        await expect(page.get_by_role("button", name="Retry")).to_be_visible()
        await check_accessibility(page, "portal-webhook-load-failed")
        await page.get_by_role("button", name="← All webhooks").click()
        await expect(page.get_by_role("heading", name="Webhooks", level=1)).to_be_focused()

        # and once the network is back, Retry shows the webhook
        await page.get_by_role("button", name="Flaky receiver").click()
        retry = page.get_by_role("button", name="Retry")
        await expect(retry).to_be_visible()
        failing = False
        await retry.click()
        await expect(page.get_by_role("heading", name="Flaky receiver", level=1)).to_be_focused()
        await expect(page.locator("dl.meta")).to_contain_text("Enabled")


async def test_a_browser_clock_that_is_fast_does_not_end_a_valid_session(stack: Api) -> None:
    # given a 60-minute session, and a customer's computer whose clock is 65 minutes fast
    account = await stack.account()
    session = await portal_url(account, ttl=60)
    async with chromium() as browser:
        page = await browser.new_page(viewport=DESKTOP)
        await page.clock.install(time=datetime.now() + timedelta(minutes=65))

        # when the portal opens, and 10 minutes pass
        await page.goto(session["url"])
        await expect(page.get_by_role("heading", name="Webhooks", level=1)).to_be_focused()
        await page.clock.fast_forward("10:00")
        # then the session still works
        await page.get_by_role("button", name="Add Webhook").click()
        await expect(page.get_by_role("heading", name="Add Webhook", level=1)).to_be_focused()

        # and it ends when the server's 60 minutes are over
        await page.clock.fast_forward("50:01")
        await expect(page.get_by_role("heading", name="Session expired", level=1)).to_be_visible()
        assert await page.evaluate("sessionStorage.length") == 0


REVOKE_FAILED = {
    "data": {
        "revokePortalSession": {
            "revokedId": None,
            "errors": [{"message": "The session could not be revoked: try again."}],
        }
    }
}


async def test_end_session_says_so_when_the_session_could_not_be_ended(stack: Api) -> None:
    # given an open portal, on a network that drops the request to end the session
    account = await stack.account()
    session = await portal_url(account)
    answer = "abort"

    async def revoke(route: Route) -> None:
        if "revokePortalSession" not in (route.request.post_data or "") or answer == "server":
            await route.continue_()
        elif answer == "abort":
            await route.abort()
        else:
            await route.fulfill(json=REVOKE_FAILED)

    async with chromium() as browser:
        page = await browser.new_page(viewport=DESKTOP)
        await page.goto(session["url"])
        await expect(page.get_by_role("heading", name="Webhooks", level=1)).to_be_focused()
        await page.route("**/graphql", revoke)

        # when the customer clicks "End session"
        await page.get_by_role("button", name="End session").click()
        # then the page says the session could not be ended and is still active, with "Try again"
        alert = page.get_by_role("alert")
        await expect(alert).to_contain_text("The session could not be ended and is still active")
        await expect(alert).to_contain_text("cannot be reached")
        await expect(page.get_by_role("heading", name="Webhooks", level=1)).to_be_visible()
        await check_accessibility(page, "portal-end-session-failed")
        assert session["token"] in await page.evaluate("JSON.stringify(sessionStorage)")
        still = await GraphQLClient(stack.http, session["token"]).raw(WEBHOOKS)
        assert "errors" not in still, still

        # when trying again gets an answer with an error: that error is shown
        answer = "errors"
        await alert.get_by_role("button", name="Try again").click()
        await expect(alert).to_contain_text("The session could not be revoked: try again.")
        await expect(page.get_by_role("heading", name="Webhooks", level=1)).to_be_visible()

        # when trying again works: the session is ended, for the page and the API
        answer = "server"
        await alert.get_by_role("button", name="Try again").click()
        await expect(page.get_by_role("heading", name="Session expired", level=1)).to_be_visible()
        refused = await GraphQLClient(stack.http, session["token"]).raw(WEBHOOKS)
        assert refused["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_the_portal_catches_up_and_stays_live_when_the_feed_was_interrupted(
    stack: Api, receiver: Receiver
) -> None:
    # given the portal open on a webhook, live
    account, ids = await busy_webhook(stack, receiver, "Interrupted receiver", 1)
    session = await portal_url(account)
    redis = aioredis.Redis.from_url(str(stack.settings.redis_url))
    async with chromium() as browser:
        page = await browser.new_page(viewport=DESKTOP)
        await page.goto(session["url"])
        await page.get_by_role("button", name="Interrupted receiver").click()
        live = page.get_by_test_id("live-status")
        await expect(live).to_have_text("Live updates on", timeout=LIVE_TIMEOUT)
        # when the API process's feed loses Redis and comes back (its subscriptions end: FEED_INTERRUPTED)
        reconnects = stack.feed.stats.reconnects
        await redis.client_kill_filter(_type="pubsub")
        await redis.aclose()
        async with asyncio.timeout(15):
            while stack.feed.stats.reconnects == reconnects:  # noqa: ASYNC110 - the feed resubscribes
                await asyncio.sleep(0.05)
        # then the page subscribes again and re-queries what it shows: it stays live
        await expect(live).to_contain_text("reconnected and refreshed", timeout=20_000)
        async with asyncio.timeout(15):
            while stack.feed.subscriber_count(account_id=account.id) < 2:  # noqa: ASYNC110 - the page's two
                await asyncio.sleep(0.05)
        later = (await publish(account.gql))["event"]["deliveries"][0]["id"]
        await expect(page.locator(f'[data-delivery="{later}"]')).to_contain_text("succeeded")
        assert await listed(page) == [later, *ids]


DELETE_WEBHOOK = "mutation($id: ID!) { deleteWebhook(id: $id) { deletedId errors { code } } }"


async def test_saving_an_edit_of_a_webhook_deleted_meanwhile_says_why_it_failed(
    stack: Api, receiver: Receiver
) -> None:
    # given a webhook open in the portal's edit form
    account = await stack.account()
    webhook_id, _ = await create_webhook(account.gql, receiver.url("/gone"), name="Soon gone")
    session = await portal_url(account)
    async with chromium() as browser:
        page = await browser.new_page(viewport=DESKTOP)
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        await page.goto(session["url"])
        await page.get_by_role("button", name="Soon gone").click()
        await page.get_by_role("button", name="Edit").click()
        await expect(page.get_by_role("heading", name="Edit Soon gone", level=1)).to_be_focused()
        # when the product's backend deletes it meanwhile, and the customer saves a new name
        deleted = (await account.gql.execute(DELETE_WEBHOOK, {"id": webhook_id}))["deleteWebhook"]
        assert deleted["errors"] == []
        await page.get_by_label("Name").fill("Renamed")
        await page.get_by_role("button", name="Save changes").click()
        # then the form says why nothing was saved (the server's NOT_FOUND error), rather than nothing at all
        await expect(page.get_by_role("alert")).to_contain_text(f"no webhook with id {webhook_id}")
        await expect(page.get_by_role("heading", name="Edit Soon gone", level=1)).to_be_visible()
        assert problems == []


async def test_a_webhook_whose_endpoint_stopped_answering_shows_its_delivery_paused_live(
    mongodb_url: str, tmp_path: Path
) -> None:
    # given a deployment whose breaker opens at the first unreachable attempt, and a webhook whose endpoint
    # refuses connections, open in the portal while everything is still fine
    settings = make_settings(
        mongodb_url, tmp_path, breaker_open_after=1, retry_schedule=(0.0, 60.0), disable_after_failures=100
    )
    async with run_api(settings, worker=True) as api:
        account = await api.account()
        await create_webhook(account.gql, f"http://127.0.0.1:{free_port()}/down", name="Down endpoint")
        session = await portal_url(account)
        async with chromium() as browser:
            page = await browser.new_page(viewport=DESKTOP)
            await page.goto(session["url"])
            await page.get_by_role("button", name="Down endpoint").click()
            facts = page.locator("dl.meta")
            await expect(facts).to_contain_text("Enabled")
            await expect(page.get_by_test_id("live-status")).to_have_text(
                "Live updates on", timeout=LIVE_TIMEOUT
            )
            await expect(facts).not_to_contain_text("Paused")
            # when an event is published and its attempt cannot connect
            published = await publish(account.gql)
            await wait_for_attempt_count(account.gql, published["event"]["deliveries"][0]["id"], 1)
            # then the page says, live, that delivery is paused and why, while the webhook stays enabled
            await expect(facts).to_contain_text("Paused", timeout=LIVE_TIMEOUT)
            await expect(facts).to_contain_text("refused the connection")
            await expect(facts).to_contain_text("Enabled")
            # and its pending delivery offers no Retry (it is being sent already)
            row = page.locator(f"li[data-delivery='{published['event']['deliveries'][0]['id']}']")
            await expect(row).to_contain_text("pending")
            await expect(row.get_by_role("button", name="Retry")).to_have_count(0)
            await check_accessibility(page, "portal-webhook-paused")
