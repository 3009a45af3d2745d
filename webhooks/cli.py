"""The ``webhooks`` command: dev, serve, worker, create-account, export-schema."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from webhooks.settings import Settings, get_settings

log = logging.getLogger("webhooks")


async def _create_account(settings: Settings, name: str) -> dict[str, str]:
    from webhooks.core import open_store
    from webhooks.models import Scope
    from webhooks.repositories.accounts import AccountRepository, ApiKeyRepository

    async with open_store(settings) as cols:
        account_id = await AccountRepository(cols).create(name)
        key = await ApiKeyRepository(cols).issue(account_id, frozenset(Scope))
    return {"accountId": str(account_id), "apiKey": key}


def cmd_create_account(args: argparse.Namespace) -> int:
    name = args.name.strip()
    if not name:
        print("error: NAME must not be empty", file=sys.stderr)
        return 2
    print(json.dumps(asyncio.run(_create_account(get_settings(), name))))
    return 0


def cmd_export_schema(args: argparse.Namespace) -> int:
    from graphql_api.schema import schema

    text = schema.as_str() + "\n"
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


async def rotate_encryption_key(settings: Settings) -> int:
    """Re-encrypt every stored signing secret with the newest key; return how many webhooks changed."""
    from webhooks.core import open_store
    from webhooks.crypto import load_secret_box
    from webhooks.repositories.webhooks import WebhookRepository

    box = load_secret_box(settings)
    async with open_store(settings) as cols:
        return await WebhookRepository(cols).reencrypt_all(box.rewrap)


def cmd_rotate_encryption_key(args: argparse.Namespace) -> int:
    count = asyncio.run(rotate_encryption_key(get_settings()))
    print(f"re-encrypted the signing secrets of {count} webhook(s) with the newest key")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from graphql_api.app import create_app

    uvicorn.run(
        create_app(get_settings()),
        host=args.host,
        port=args.port,
        log_config=None,
        ws_max_size=1 << 20,
        ws_per_message_deflate=False,  # live-feed frames are small; compressing each costs CPU per subscriber
        timeout_graceful_shutdown=10,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    if args.check:
        from workers.health import check

        healthy, message = asyncio.run(check(get_settings()))
        print(message, file=sys.stdout if healthy else sys.stderr)
        return 0 if healthy else 1

    from workers.settings import run_worker

    run_worker(get_settings())
    return 0


def _dev_account(settings: Settings, data_dir: Path) -> dict[str, str]:
    """One account for local development, created on the first run and kept in the data dir."""
    path = data_dir / "dev-account.json"
    if path.exists():
        saved: dict[str, str] = json.loads(path.read_text())
        return saved
    account = asyncio.run(_create_account(settings, "Local development"))
    path.write_text(json.dumps(account))
    path.chmod(0o600)
    return account


def _ensure_graphiql_assets() -> None:
    """Build the self-hosted GraphiQL and portal assets once, when npm is available (else GraphiQL uses a
    CDN and the portal says how to build them)."""
    import shutil

    from graphql_api import portal
    from graphql_api.graphiql import ROOT_DIR, assets_available, build_assets

    built = assets_available() and portal.assets_available()
    if built or shutil.which("npm") is None or not (ROOT_DIR / "frontend").is_dir():
        return
    log.info("building the GraphiQL assets from the npm registry (first run only)")
    build_assets(ROOT_DIR)


def _portal_session_url(api_url: str, api_key: str) -> str | None:
    """A fresh customer portal session, made as a product's backend would: createPortalSession over HTTP."""
    import urllib.request

    query = {"query": "mutation { createPortalSession { url errors { message } } }"}
    request = urllib.request.Request(
        f"{api_url}/graphql",
        data=json.dumps(query).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            url = json.loads(response.read())["data"]["createPortalSession"]["url"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("could not create a customer portal session: %s", exc)
        return None
    return url if isinstance(url, str) else None


def _fresh_metrics_dir(data_dir: Path) -> Path:
    """API and worker write their metrics here; /metrics aggregates them. Emptied at each start."""
    import shutil

    path = data_dir / "metrics"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def cmd_dev(args: argparse.Namespace) -> int:
    from webhooks.crypto import load_secret_box
    from webhooks.embedded import spawn, start_stores, stop, wait_for_port

    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    _ensure_graphiql_assets()
    log.warning(
        "dev mode: plain http and private/loopback destinations are allowed (never do this in production)"
    )
    stores = start_stores(data_dir)
    env = {
        **os.environ,
        "WEBHOOKS_MONGODB_URL": stores.mongodb_url,
        "WEBHOOKS_REDIS_URL": stores.redis_url,
        "WEBHOOKS_ALLOW_HTTP": "true",
        "WEBHOOKS_ALLOW_PRIVATE_DESTINATIONS": "true",
        "WEBHOOKS_DATA_DIR": str(data_dir),
        "WEBHOOKS_LOG_FORMAT": os.environ.get("WEBHOOKS_LOG_FORMAT", "text"),
        "PROMETHEUS_MULTIPROC_DIR": str(_fresh_metrics_dir(data_dir)),
    }
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        settings = Settings(mongodb_url=stores.mongodb_url, redis_url=stores.redis_url, data_dir=data_dir)
        load_secret_box(settings)  # create the encryption key once, before two processes race for it
        account = _dev_account(settings, data_dir)
        exe = [sys.executable, "-m", "webhooks.cli"]
        children.append(spawn([*exe, "worker"], env=env))
        children.append(spawn([*exe, "serve", "--host", args.host, "--port", str(args.port)], env=env))
        wait_for_port(args.port, children[-1], "the API", timeout=60)
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        print(f"\nHatchBeacon Webhooks is running (data in {data_dir})", flush=True)
        print(f"  GraphiQL:  http://{host}:{args.port}/graphql", flush=True)
        print(f"  API key:   {account['apiKey']}", flush=True)
        print(f'  Headers:   {{"Authorization": "Bearer {account["apiKey"]}"}}', flush=True)
        portal_url = _portal_session_url(f"http://{host}:{args.port}", account["apiKey"])
        if portal_url:
            print(f"  Portal:    {portal_url}  (Settings → Webhooks; a fresh 60-minute session)", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        while not stopping:
            if any(c.poll() is not None for c in children):
                log.error("a child process exited unexpectedly; stopping")
                return 1
            time.sleep(0.2)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for child in reversed(children):
            stop(child)
        stores.stop()
        print("stopped", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="webhooks", description="HatchBeacon Webhooks")
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="API + worker + embedded stores, for local development")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--data-dir", default=".webhooks")
    dev.set_defaults(run=cmd_dev)

    serve = sub.add_parser("serve", help="run the GraphQL API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=cmd_serve)

    worker = sub.add_parser("worker", help="run a delivery worker")
    worker.add_argument(
        "--check",
        action="store_true",
        help="exit 0 if a worker on this queue reported in recently (a healthcheck), else 1",
    )
    worker.set_defaults(run=cmd_worker)

    account = sub.add_parser("create-account", help="create an account and print its first API key as JSON")
    account.add_argument("name")
    account.set_defaults(run=cmd_create_account)

    rotate = sub.add_parser(
        "rotate-encryption-key",
        help="re-encrypt every signing secret with the newest key (WEBHOOKS_SECRET_KEYS, newest first)",
        description="Put the new key first in WEBHOOKS_SECRET_KEYS (keep the old ones after it) and restart "
        "the API and workers; then run this; then the old keys can be removed. Safe to run again.",
    )
    rotate.set_defaults(run=cmd_rotate_encryption_key)

    export = sub.add_parser("export-schema", help="print the GraphQL schema (SDL)")
    export.add_argument("--output", "-o", default=None)
    export.set_defaults(run=cmd_export_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    from webhooks.logging_setup import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging(
        json_lines=False if args.command in ("dev", "create-account", "export-schema") else None
    )
    try:
        return int(args.run(args))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
