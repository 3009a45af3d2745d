"""The ``webhooks`` command: dev, serve, worker, create-account, create-api-key, revoke-api-key,
rotate-encryption-key, export-schema.

This package is the composition root: it sits above ``webhooks`` (the core), ``graphql_api`` and
``workers`` and is the only place that wires them together.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from pymongo.errors import ConnectionFailure

from webhooks.settings import Settings, SettingsError, get_settings

log = logging.getLogger("webhooks")


async def create_account(settings: Settings, name: str) -> dict[str, str]:
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
    print(json.dumps(asyncio.run(create_account(get_settings(), name))))
    return 0


async def create_api_key(settings: Settings, account: str, scopes: list[str]) -> dict[str, object] | None:
    """A new key of an existing account with ``scopes`` (all when empty); None if there is no such account."""
    from bson import ObjectId

    from webhooks.core import open_store
    from webhooks.models import Scope
    from webhooks.repositories.accounts import AccountRepository, ApiKeyRepository

    chosen = frozenset(Scope(s) for s in scopes) if scopes else frozenset(Scope)
    async with open_store(settings) as cols:
        account_id = ObjectId(account)
        if not await AccountRepository(cols).exists(account_id):
            return None
        key = await ApiKeyRepository(cols).issue(account_id, chosen)
    return {"accountId": account, "apiKey": key, "scopes": sorted(s.value for s in chosen)}


def cmd_create_api_key(args: argparse.Namespace) -> int:
    from bson import ObjectId

    if not ObjectId.is_valid(args.account_id):
        print("error: ACCOUNT_ID must be an account id (24 hex digits)", file=sys.stderr)
        return 2
    created = asyncio.run(create_api_key(get_settings(), args.account_id, args.scope or []))
    if created is None:
        print("error: there is no account with this id", file=sys.stderr)
        return 1
    print(json.dumps(created))
    return 0


async def revoke_api_key(settings: Settings, key: str) -> bool:
    """Revoke the active key ``key``; every API process drops it at once (the revocation is published to
    them as the API's own revocations are), or within ``WEBHOOKS_AUTH_CACHE_TTL`` if that message is lost."""
    from webhooks.core import open_core

    async with open_core(settings) as core:
        principal = await core.api_keys.authenticate(key)
        return principal is not None and await core.api_keys.revoke(principal.account_id, principal.key_id)


def cmd_revoke_api_key(args: argparse.Namespace) -> int:
    key = sys.stdin.readline().strip()  # read from stdin: never on the command line (shell history, ps)
    if not key:
        print("error: give the API key to revoke on standard input", file=sys.stderr)
        return 2
    if not asyncio.run(revoke_api_key(get_settings(), key)):
        print("error: no active API key matches", file=sys.stderr)
        return 1
    print("revoked the API key")
    return 0


def cmd_export_schema(args: argparse.Namespace) -> int:
    from graphql_api.schema import build_schema

    text = build_schema(get_settings()).as_str() + "\n"
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
    from webhooks.repositories.webhooks import ReencryptionIncomplete

    try:
        count = asyncio.run(rotate_encryption_key(get_settings()))
    except ReencryptionIncomplete as exc:
        print(
            f"not every secret was re-encrypted ({exc}); keep the old key until a run completes",
            file=sys.stderr,
        )
        return 1
    print(f"re-encrypted the signing secrets of {count} webhook(s) with the newest key")
    return 0


def check_stores(settings: Settings, *, mongodb: bool = True) -> None:
    """Raise :class:`SettingsError` for store settings that are otherwise checked only once a connection
    opens, inside the API's lifespan or the worker's start-up, where they would end in a traceback."""
    from webhooks.redis_conn import RedisTarget

    if mongodb and not settings.mongodb_url:
        raise SettingsError(
            "WEBHOOKS_MONGODB_URL is not set: use `webhooks dev` for the embedded default, "
            "or point it at a MongoDB server"
        )
    try:
        RedisTarget.of(settings).arq_settings()
    except SettingsError:
        raise
    except ValueError as exc:
        raise SettingsError(f"WEBHOOKS_REDIS_URL: {exc}") from None


def check_secret_keys(settings: Settings) -> None:
    """Raise :class:`SettingsError` if the encryption keys cannot be loaded: without WEBHOOKS_SECRET_KEYS, a
    key file that cannot be made or read in WEBHOOKS_DATA_DIR (else the worker took the OSError for a lost
    Redis and started again forever, and the API failed in its lifespan)."""
    from webhooks.crypto import KEY_FILE_NAME, load_secret_box

    try:
        load_secret_box(settings)
    except OSError as exc:
        raise SettingsError(
            f"WEBHOOKS_DATA_DIR: cannot keep the generated encryption key in {settings.data_dir} "
            f"({exc.strerror or exc}); set WEBHOOKS_SECRET_KEYS, or a writable WEBHOOKS_DATA_DIR"
        ) from None
    except ValueError:
        raise SettingsError(
            f"WEBHOOKS_DATA_DIR: {settings.data_dir}/{KEY_FILE_NAME} does not hold Fernet keys"
        ) from None


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for the API (``webhooks serve``; the benchmark's server uses them too)."""
    return {
        "log_config": None,
        "ws_max_size": 1 << 20,
        # live-feed frames are small; compressing each costs CPU per subscriber
        "ws_per_message_deflate": False,
        "timeout_keep_alive": settings.http_keep_alive_seconds,
        "timeout_graceful_shutdown": 10,
    }


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from graphql_api.app import create_app

    settings = get_settings()
    check_stores(settings)
    check_secret_keys(settings)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, **server_options(settings))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings = get_settings()
    check_stores(settings, mongodb=not args.check)
    if args.check:
        from workers.health import check

        healthy, message = asyncio.run(check(settings))
        print(message, file=sys.stdout if healthy else sys.stderr)
        return 0 if healthy else 1

    from workers.worker import run_worker

    check_secret_keys(settings)
    run_worker(settings)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="webhooks", description="HatchBeacon Webhooks")
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="API + worker + embedded stores, for local development")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--data-dir", default=".webhooks")
    dev.set_defaults(run=cmd_dev)  # imported lazily: it needs the development stores

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

    from webhooks.models import Scope

    api_key = sub.add_parser(
        "create-api-key",
        help="create another API key of an account and print it as JSON (e.g. a publish-only key)",
    )
    api_key.add_argument("account_id", metavar="ACCOUNT_ID")
    api_key.add_argument(
        "--scope",
        action="append",
        choices=[s.value for s in Scope],
        help="a scope of the key (repeat for several; default: all)",
    )
    api_key.set_defaults(run=cmd_create_api_key)

    revoke = sub.add_parser(
        "revoke-api-key",
        help="revoke the API key read from standard input (e.g. a leaked one)",
        description="Reads the key from standard input, so that it stays out of shell history and process "
        "lists. Every API process stops accepting it at once (through Redis), or within "
        "WEBHOOKS_AUTH_CACHE_TTL seconds if that message is lost.",
    )
    revoke.set_defaults(run=cmd_revoke_api_key)

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


def cmd_dev(args: argparse.Namespace) -> int:
    from webhooks_cli.dev import run_dev

    return run_dev(args)


def main(argv: list[str] | None = None) -> int:
    from webhooks.logging_setup import configure_logging

    args = build_parser().parse_args(argv)
    try:
        configure_logging(
            json_lines=False if args.command in ("dev", "create-account", "export-schema") else None
        )
        return int(args.run(args))
    except (RuntimeError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ConnectionFailure as exc:  # e.g. nothing answers at WEBHOOKS_MONGODB_URL (after 10 s)
        reason = str(exc).split(" (configured timeouts", 1)[0].split(", Timeout:", 1)[0][:300]
        print(f"error: cannot reach MongoDB at WEBHOOKS_MONGODB_URL: {reason}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
