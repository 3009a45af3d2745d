"""Browser tests' shared parts: Playwright driving Debian's ``chromium`` (never a downloaded browser),
the npm-built assets, axe-core checks and screenshots kept under ``test-artifacts/`` (git-ignored)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Browser, Page, async_playwright, expect

from graphql_api import graphiql, portal
from tests.support import missing_tool

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def require_tools() -> None:
    if not Path(CHROMIUM).is_file():
        missing_tool("chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
    if not (graphiql.assets_available() and portal.assets_available()):
        if shutil.which("npm") is None:
            missing_tool("the browser assets are not built and npm is missing to build them")
        assert graphiql.build_assets(ROOT), "building the browser assets with npm failed (see the log)"


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


class Requests:
    """Every URL a page requests (HTTP and WebSocket), to prove it never leaves the service."""

    def __init__(self, page: Page) -> None:
        self.urls: list[str] = []
        page.on("request", lambda request: self.urls.append(request.url))
        page.on("websocket", lambda ws: self.urls.append(ws.url))

    def foreign(self, origin: str) -> list[str]:
        host = urlsplit(origin).netloc
        return [
            u
            for u in self.urls
            if urlsplit(u).scheme not in ("data", "blob", "about") and urlsplit(u).netloc != host
        ]

    def websockets(self) -> list[str]:
        return [u for u in self.urls if urlsplit(u).scheme in ("ws", "wss")]


_axe = Axe()
# How long expect() waits for the page to get there (Playwright's default is 5 s): a bound for a loaded
# machine (2 cores shared by the suite's processes), not a performance assertion.
expect.set_options(timeout=20_000)


async def check_accessibility(page: Page, screen: str) -> None:
    """axe-core on the page as it is now: no serious or critical violation. Saves a screenshot."""
    await screenshot(page, screen)
    results = await _axe.run(page)
    violations: list[dict[str, Any]] = results.response["violations"]
    bad = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in violations
        if v.get("impact") in ("serious", "critical")
    ]
    assert not bad, f"axe on screen {screen!r}: {bad}"


async def screenshot(page: Page, screen: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{screen}.png"), full_page=True)
