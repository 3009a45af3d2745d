"""A self-hosted GraphiQL page for ``GET /graphql`` (Accept: text/html).

The browser assets (React, ReactDOM, GraphiQL's standalone UMD bundle, which contains ``graphql`` and
``@graphiql/toolkit``, and the ``graphql-ws`` client's UMD build, with which the page's fetcher runs
subscriptions over WebSocket) are installed from the npm registry at build time by :func:`build_assets`
into ``graphql_api/static/vendor/`` (git-ignored) and served by the service itself under
``/static/vendor``, so opening the page makes no request to any other host.  When the assets have not
been built, :func:`render_graphiql` falls back to Strawberry's stock GraphiQL page, which loads its
assets from a CDN, and logs a warning once.

Wiring (``graphql_api/app.py``)::

    async def render_graphql_ide(self, request: Request) -> Response:  # in GraphQLView
        return render_graphiql(request)

    routes=[..., *graphiql_routes(settings.graphiql)]                   # in create_app
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import secrets
import shutil
import subprocess
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from strawberry.http.ides import get_graphql_ide_html

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
ROOT_DIR = PACKAGE_DIR.parent  # the source checkout (holds frontend/package.json)
STATIC_DIR = PACKAGE_DIR / "static"
TEMPLATE_PATH = STATIC_DIR / "graphiql.html"
# Module-level so tests can point it elsewhere (monkeypatch); read at call time.
VENDOR_DIR = STATIC_DIR / "vendor"
VENDOR_URL = "/static/vendor"
BUILD_STAMP = "BUILD"
MANIFEST = "manifest.json"

# (path under frontend/node_modules, file name in the vendor dir)
ASSETS: tuple[tuple[str, str], ...] = (
    ("react/umd/react.production.min.js", "react.production.min.js"),
    ("react-dom/umd/react-dom.production.min.js", "react-dom.production.min.js"),
    ("graphiql/graphiql.min.js", "graphiql.min.js"),
    ("graphiql/graphiql.min.css", "graphiql.min.css"),
    # The graphql-ws client (global ``graphqlWs``): the page's fetcher runs subscriptions with it.
    ("graphql-ws/umd/graphql-ws.min.js", "graphql-ws.min.js"),
)
# The customer portal's modules (graphql_api/portal.py), built in the same step: plain ES modules, no bundler.
PORTAL_ASSETS: tuple[tuple[str, str], ...] = (
    ("htm/preact/standalone.mjs", "portal/htm-preact.mjs"),
    ("graphql-ws/lib/client.mjs", "portal/graphql-ws/client.mjs"),
    ("graphql-ws/lib/common.mjs", "portal/graphql-ws/common.mjs"),
    ("graphql-ws/lib/utils.mjs", "portal/graphql-ws/utils.mjs"),
)
# Source maps: copied when present (only fetched by browser devtools), never required.
OPTIONAL_ASSETS: tuple[tuple[str, str], ...] = (
    ("graphiql/graphiql.min.js.map", "graphiql.min.js.map"),
    ("graphiql/graphiql.min.css.map", "graphiql.min.css.map"),
)
# Packages whose installed versions are recorded in the vendor manifest.
PACKAGES = ("graphiql", "react", "react-dom", "graphql", "graphql-ws", "@graphiql/toolkit", "htm")

NPM_TIMEOUT = 600.0
_HOST_RE = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


# --------------------------------------------------------------------------------------------- build


def build_assets(root: Path) -> bool:
    """Install ``root/frontend`` from the npm registry and copy the browser assets into
    ``root/graphql_api/static/vendor``.  Returns False (logging why) if npm is missing or fails."""
    frontend = root / "frontend"
    vendor = root / "graphql_api" / "static" / "vendor"
    npm = shutil.which("npm")
    if npm is None:
        log.error("cannot build GraphiQL assets: `npm` is not on PATH (install Node.js >= 18)")
        return False
    if not (frontend / "package.json").is_file():
        log.error("cannot build GraphiQL assets: %s is missing", frontend / "package.json")
        return False
    lockfile = frontend / "package-lock.json"
    cmd = [npm, "ci"] if lockfile.is_file() else [npm, "install"]
    cmd += ["--no-audit", "--no-fund", "--no-save", "--omit=dev"]
    log.info("building GraphiQL assets: %s (in %s)", " ".join(cmd[1:]), frontend)
    try:
        proc = subprocess.run(
            cmd, cwd=frontend, capture_output=True, text=True, timeout=NPM_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.error("cannot build GraphiQL assets: %s failed: %s", " ".join(cmd[1:]), exc)
        return False
    if proc.returncode != 0:
        log.error(
            "cannot build GraphiQL assets: `npm %s` exited with %d:\n%s",
            " ".join(cmd[1:]),
            proc.returncode,
            (proc.stderr or proc.stdout).strip()[-4000:],
        )
        return False
    return copy_assets(frontend / "node_modules", vendor)


def copy_assets(node_modules: Path, vendor: Path) -> bool:
    """Copy the assets out of an installed ``node_modules`` into ``vendor`` (replacing its content)."""
    missing = [src for src, _ in ASSETS + PORTAL_ASSETS if not (node_modules / src).is_file()]
    if missing:
        log.error("cannot build GraphiQL assets: not in %s: %s", node_modules, ", ".join(missing))
        return False
    if vendor.exists():
        shutil.rmtree(vendor)
    vendor.mkdir(parents=True)
    digest = hashlib.sha256()
    for src, dest in ASSETS + PORTAL_ASSETS + OPTIONAL_ASSETS:
        path = node_modules / src
        if path.is_file():
            (vendor / dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, vendor / dest)
            digest.update(dest.encode() + b"\0" + path.read_bytes())
    versions = {name: _package_version(node_modules / name) for name in PACKAGES}
    (vendor / MANIFEST).write_text(json.dumps({"versions": versions}, indent=2) + "\n", encoding="utf-8")
    # Written last: its presence marks a complete build; its value busts browser caches.
    (vendor / BUILD_STAMP).write_text(digest.hexdigest()[:16] + "\n", encoding="utf-8")
    log.info("GraphiQL assets built in %s: %s", vendor, versions)
    return True


def _package_version(package_dir: Path) -> str | None:
    try:
        data = json.loads((package_dir / "package.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    version = data.get("version") if isinstance(data, dict) else None
    return version if isinstance(version, str) else None


# -------------------------------------------------------------------------------------------- serve


def assets_available(vendor: Path | None = None) -> bool:
    """Whether a complete build is there: every required asset (a vendor dir built before an asset was
    added lacks it, so it gets rebuilt) and the build stamp, which is written last."""
    vendor = VENDOR_DIR if vendor is None else vendor
    return all((vendor / dest).is_file() for _, dest in ASSETS) and (vendor / BUILD_STAMP).is_file()


def render_graphiql(request: Request) -> HTMLResponse:
    """The GraphiQL page: our own, served entirely from this service when the vendored assets are
    built, otherwise Strawberry's CDN-based page (with a one-time warning)."""
    vendor = VENDOR_DIR
    if not assets_available(vendor):
        _warn_missing(vendor)
        return HTMLResponse(get_graphql_ide_html("graphiql"))
    nonce = secrets.token_urlsafe(16)
    prefix = str(request.scope.get("root_path", "")).rstrip("/") + VENDOR_URL
    html = (
        _template()
        .replace("__VENDOR__", prefix)
        .replace("__VERSION__", _build_stamp(vendor))
        .replace("__NONCE__", nonce)
    )
    return HTMLResponse(
        html,
        headers={
            "Content-Security-Policy": _csp(nonce, request.headers.get("host", "")),
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        },
    )


def vendor_mount(vendor: Path | None = None) -> Mount:
    """``/static/vendor`` → the built assets.  Does not require the directory to exist yet."""
    directory = VENDOR_DIR if vendor is None else vendor
    return Mount(VENDOR_URL, app=StaticFiles(directory=directory, check_dir=False), name="graphiql-vendor")


def graphiql_routes(enabled: bool, vendor: Path | None = None) -> list[BaseRoute]:
    """Routes to add to the Starlette app next to ``/graphql`` (nothing when GraphiQL is disabled)."""
    return [vendor_mount(vendor)] if enabled else []


def _csp(nonce: str, host: str) -> str:
    # 'self' covers same-origin ws:/wss: in CSP3 browsers; spell the socket origins out for the rest.
    sockets = f" ws://{host} wss://{host}" if _HOST_RE.match(host) else ""
    return "; ".join(
        (
            "default-src 'none'",
            f"script-src 'self' 'nonce-{nonce}'",
            "style-src 'self' 'unsafe-inline'",
            "font-src 'self' data:",
            "img-src 'self' data:",
            f"connect-src 'self'{sockets}",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


@functools.cache
def _template() -> str:
    return TEMPLATE_PATH.read_text(encoding="utf-8")


def _build_stamp(vendor: Path) -> str:
    try:
        stamp = (vendor / BUILD_STAMP).read_text(encoding="utf-8").strip()
    except OSError:
        return "0"
    return stamp if stamp.isalnum() else "0"


@functools.cache
def _warn_missing(vendor: Path) -> None:
    log.warning(
        "GraphiQL assets are not built in %s: serving Strawberry's GraphiQL page, which loads its "
        "assets from a CDN. Build them with: "
        "uv run python -c 'from pathlib import Path; from graphql_api.graphiql import build_assets; "
        "build_assets(Path.cwd())'",
        vendor,
    )
