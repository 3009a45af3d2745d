"""The self-hosted GraphiQL page: same-origin assets only, and the CDN fallback when they are not built.

Independent of MongoDB/Redis: a tiny Starlette app with just the GraphiQL routes.
"""

from __future__ import annotations

import logging
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from graphql_api import graphiql
from tests.support import missing_tool

ROOT = Path(__file__).resolve().parents[1]


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.scripts: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.refs += [value or "" for name, value in attrs if name in ("src", "href")]
        if tag == "script":
            self.scripts.append(dict(attrs))


def refs_of(html: str) -> _Refs:
    parser = _Refs()
    parser.feed(html)
    return parser


def is_same_origin(ref: str) -> bool:
    if ref.startswith("data:"):
        return True
    return not re.match(r"^[a-zA-Z][a-zA-Z0-9+.\-]*:", ref) and not ref.startswith("//")


def make_app(vendor: Path) -> Starlette:
    async def page(request: Request) -> Response:
        return graphiql.render_graphiql(request)

    return Starlette(routes=[Route("/graphql", page), *graphiql.graphiql_routes(True, vendor)])


def client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8000")


@pytest.fixture(scope="module")
def built_vendor() -> Path:
    """The real vendored assets, built from the npm registry if they are not there yet."""
    if not graphiql.assets_available(graphiql.VENDOR_DIR):
        if shutil.which("npm") is None:
            missing_tool("GraphiQL assets not built and `npm` is not available to build them")
        assert graphiql.build_assets(ROOT), "build_assets failed (see log)"
    assert graphiql.assets_available(graphiql.VENDOR_DIR)
    return graphiql.VENDOR_DIR


@pytest.fixture
def fake_vendor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A vendor dir with placeholder assets, so the page logic is tested without npm."""
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    for _, dest in graphiql.ASSETS:
        (vendor / dest).write_text(f"/* {dest} */\n", encoding="utf-8")
    (vendor / graphiql.BUILD_STAMP).write_text("abc123\n", encoding="utf-8")
    monkeypatch.setattr(graphiql, "VENDOR_DIR", vendor)
    return vendor


async def test_built_page_references_only_same_origin_assets_that_exist(built_vendor: Path) -> None:
    async with client(make_app(built_vendor)) as http:
        page = await http.get("/graphql", headers={"accept": "text/html"})
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        html = page.text
        parsed = refs_of(html)
        assert parsed.refs, "the page references no assets?"
        assert all(is_same_origin(ref) for ref in parsed.refs), parsed.refs
        assert "unpkg.com" not in html and "cdn" not in html.lower() and "googleapis" not in html

        vendored = sorted({ref.split("?")[0] for ref in parsed.refs if ref.startswith("/static/vendor/")})
        assert vendored == sorted(f"/static/vendor/{dest}" for _, dest in graphiql.ASSETS)
        for ref in vendored:
            name = ref.removeprefix("/static/vendor/")
            assert (built_vendor / name).is_file(), ref
            served = await http.get(ref)
            assert served.status_code == 200, ref
            assert served.content == (built_vendor / name).read_bytes()

    # The stylesheet must not pull fonts/images from elsewhere either (GraphiQL inlines its fonts).
    css = (built_vendor / "graphiql.min.css").read_text(encoding="utf-8")
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", css)


async def test_page_uses_the_same_endpoint_for_subscriptions_and_a_headers_placeholder(
    fake_vendor: Path,
) -> None:
    async with client(make_app(fake_vendor)) as http:
        page = await http.get("/graphql", headers={"accept": "text/html"})
    html = page.text
    assert "__VENDOR__" not in html and "__VERSION__" not in html and "__NONCE__" not in html
    assert "/static/vendor/graphiql.min.js?v=abc123" in html
    assert "graphqlWs.createClient" in html and "url: wsUrl" in html and "window.location.pathname" in html
    assert "/static/vendor/graphql-ws.min.js?v=abc123" in html
    assert 'Authorization: "Bearer <paste your API key>"' in html

    csp = page.headers["content-security-policy"]
    inline = [s for s in refs_of(html).scripts if "src" not in s]
    assert len(inline) == 1 and inline[0]["nonce"], "the inline script must carry the CSP nonce"
    assert f"'nonce-{inline[0]['nonce']}'" in csp
    assert "default-src 'none'" in csp
    assert "connect-src 'self' ws://127.0.0.1:8000 wss://127.0.0.1:8000" in csp
    assert "http" not in csp  # no other origin is allowed anything


async def test_page_honours_root_path(fake_vendor: Path) -> None:
    app = make_app(fake_vendor)
    transport = httpx.ASGITransport(app=app, root_path="/hooks")
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        page = await http.get("/graphql", headers={"accept": "text/html"})
    assert all(ref.startswith(("/hooks/static/vendor/", "data:")) for ref in refs_of(page.text).refs)


async def test_without_assets_falls_back_to_strawberry_cdn_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    empty = tmp_path / "vendor"
    empty.mkdir()
    monkeypatch.setattr(graphiql, "VENDOR_DIR", empty)
    graphiql._warn_missing.cache_clear()
    assert not graphiql.assets_available()

    with caplog.at_level(logging.WARNING, logger="graphql_api.graphiql"):
        async with client(make_app(empty)) as http:
            first = await http.get("/graphql", headers={"accept": "text/html"})
            second = await http.get("/graphql", headers={"accept": "text/html"})
    assert first.status_code == second.status_code == 200
    assert "unpkg.com" in first.text and "/static/vendor/" not in first.text
    from strawberry.http.ides import get_graphql_ide_html

    assert first.text == get_graphql_ide_html("graphiql")
    warnings = [r for r in caplog.records if "not built" in r.getMessage()]
    assert len(warnings) == 1, "the missing-assets warning is logged once, not per request"


def test_graphiql_routes_disabled_is_empty() -> None:
    assert graphiql.graphiql_routes(False) == []


def test_build_assets_without_npm_returns_false(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with caplog.at_level(logging.ERROR, logger="graphql_api.graphiql"):
        assert graphiql.build_assets(tmp_path) is False
    assert "npm" in caplog.text
    assert not (tmp_path / "graphql_api").exists()
