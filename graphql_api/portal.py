"""The embeddable customer portal (Settings → Webhooks) at ``GET /portal``.

The page is a small client of the public GraphQL API and nothing else: its own files live in
``graphql_api/static/portal/`` (committed), the npm packages it imports (htm + Preact, graphql-ws, as
plain ES modules) are built into ``graphql_api/static/vendor/portal/`` with GraphiQL's assets by
:func:`graphql_api.graphiql.build_assets` (never committed). Every asset is served by this service
under ``/portal/``; the page makes no request to any other host.

The session token arrives in the URL fragment (``/portal#token=…``), which browsers never send to a
server; the page moves it to ``sessionStorage`` and clears it on expiry or sign-out.

Headers: a strict Content-Security-Policy (no inline script or style, no ``eval``, connections to this
origin only) whose ``frame-ancestors`` is ``WEBHOOKS_PORTAL_FRAME_ANCESTORS`` (default ``'self'``), so a
product can embed the page in an iframe on its own origins.

Wiring (``graphql_api/app.py``)::

    routes=[..., *portal_routes(settings)]
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketState

from graphql_api import graphiql
from webhooks.settings import Settings, SettingsError
from webhooks.timeutil import utcnow

log = logging.getLogger(__name__)

PORTAL_DIR = Path(__file__).resolve().parent / "static" / "portal"
PAGE = "index.html"

# One CSP source expression: a keyword ('self', 'none'), a scheme (https:) or a host source
# (https://app.example.com, *.example.com, example.com:8443).
_SOURCE_RE = re.compile(
    r"^('self'|'none'|[a-z][a-z0-9+.\-]*:|([a-z][a-z0-9+.\-]*://)?(\*\.)?[A-Za-z0-9.\-]+(:(\d{1,5}|\*))?(/[^\s;,']*)?)$"
)
_HOST_RE = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")

# How often an open WebSocket of a portal session re-checks that the session was not revoked.
SESSION_RECHECK_SECONDS = 5.0
SESSION_ENDED_CLOSE_CODE = 4403
_guards: set[asyncio.Task[None]] = set()

SETUP_HINT = (
    "The customer portal's browser assets are not built. Build them once with npm: "
    "uv run python -c 'from pathlib import Path; from graphql_api.graphiql import build_assets; "
    "build_assets(Path.cwd())' (webhooks dev and the Docker build do this)."
)


def frame_ancestors(value: str) -> str:
    """Validate ``WEBHOOKS_PORTAL_FRAME_ANCESTORS`` (space-separated CSP sources) and return it normalized."""
    sources = value.split()
    if not sources:
        raise SettingsError(
            "WEBHOOKS_PORTAL_FRAME_ANCESTORS must not be empty (use 'none' to forbid embedding)"
        )
    bad = [s for s in sources if not _SOURCE_RE.match(s)]
    if bad:
        raise SettingsError(
            "WEBHOOKS_PORTAL_FRAME_ANCESTORS must be space-separated CSP sources such as "
            f"'self' https://app.example.com; not valid: {' '.join(bad)}"
        )
    if "'none'" in sources and len(sources) > 1:
        raise SettingsError("WEBHOOKS_PORTAL_FRAME_ANCESTORS: 'none' cannot be combined with other sources")
    return " ".join(sources)


def content_security_policy(ancestors: str, host: str) -> str:
    # 'self' covers same-origin ws:/wss: in CSP3 browsers; spell the socket origins out for the rest.
    sockets = f" ws://{host} wss://{host}" if _HOST_RE.match(host) else ""
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "font-src 'self'",
            f"connect-src 'self'{sockets}",
            "base-uri 'none'",
            "form-action 'none'",
            "object-src 'none'",
            f"frame-ancestors {ancestors}",
        )
    )


def _security_headers(csp: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp,
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=(), clipboard-write=(self)",
    }


def assets_available(vendor: Path | None = None) -> bool:
    vendor = graphiql.VENDOR_DIR if vendor is None else vendor
    return (
        all((vendor / dest).is_file() for _, dest in graphiql.PORTAL_ASSETS)
        and (vendor / graphiql.BUILD_STAMP).is_file()
    )


@functools.cache
def _page() -> str:
    return (PORTAL_DIR / PAGE).read_text(encoding="utf-8")


class _StaticWithHeaders:
    """StaticFiles plus the portal's security headers (and revalidation, as the files are not hashed)."""

    def __init__(self, directory: Path, csp: str) -> None:
        self._files = StaticFiles(directory=directory, check_dir=False)
        self._headers = [(k.lower().encode(), v.encode()) for k, v in _security_headers(csp).items()]
        self._headers.append((b"cache-control", b"no-cache"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))  # type: ignore[call-overload]
                message["headers"] = headers + self._headers
            await send(message)

        await self._files(scope, receive, send_with_headers)  # type: ignore[arg-type]


def portal_routes(settings: Settings, vendor: Path | None = None) -> list[BaseRoute]:
    """``/portal`` (the page), ``/portal/app`` (its modules and styles), ``/portal/vendor`` (npm builds)."""
    ancestors = frame_ancestors(settings.portal_frame_ancestors)
    vendor_dir = graphiql.VENDOR_DIR if vendor is None else vendor
    asset_csp = content_security_policy("'none'", "")

    async def page(request: Request) -> Response:
        if not assets_available(vendor_dir):
            return PlainTextResponse(SETUP_HINT, status_code=503, headers={"Cache-Control": "no-store"})
        csp = content_security_policy(ancestors, request.headers.get("host", ""))
        version = graphiql._build_stamp(vendor_dir)
        html = _page().replace("__VERSION__", version)
        headers = {**_security_headers(csp), "Cache-Control": "no-store"}
        return HTMLResponse(html, headers=headers)

    return [
        Route("/portal", page, methods=["GET"]),
        Mount("/portal/app", app=_StaticWithHeaders(PORTAL_DIR, asset_csp), name="portal-app"),
        Mount(
            "/portal/vendor", app=_StaticWithHeaders(vendor_dir / "portal", asset_csp), name="portal-vendor"
        ),
    ]


def end_socket_with_session(
    websocket: WebSocket, expires_at: datetime | None, still_valid: Callable[[], Awaitable[bool]]
) -> None:
    """Close a WebSocket (code 4403) when its credentials end: a portal session that expires or is revoked,
    an API key that is revoked (``expires_at`` None), so a live feed never outlives them. Re-checks every
    ``SESSION_RECHECK_SECONDS`` (through the authentication cache, which revocations reach at once); ends
    with the socket."""
    reason = "The portal session has ended" if expires_at is not None else "The API key is no longer valid"

    def connected() -> bool:
        return (
            websocket.client_state is WebSocketState.CONNECTED
            and websocket.application_state is WebSocketState.CONNECTED
        )

    async def guard() -> None:
        while connected():
            left = (expires_at - utcnow()).total_seconds() if expires_at else SESSION_RECHECK_SECONDS
            await asyncio.sleep(max(0.0, min(SESSION_RECHECK_SECONDS, left)))
            if not connected():
                return
            if (expires_at is not None and expires_at <= utcnow()) or not await still_valid():
                with contextlib.suppress(Exception):  # the client may be gone at this very moment
                    await websocket.close(SESSION_ENDED_CLOSE_CODE, reason)
                return

    task = asyncio.get_running_loop().create_task(guard())
    _guards.add(task)
    task.add_done_callback(_guards.discard)
