"""Real processes for the benchmarks: stores, API, worker, receiver; and a small GraphQL client."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.fernet import Fernet

from webhooks_cli.embedded import EmbeddedStores, free_port, start_stores, stop, wait_for_port

# A client must let an idle connection go before the server does, or it may send a request on it just as
# the server closes it (ServerDisconnectedError: seen at the start of P1 runs while the API kept uvicorn's
# default of 5 s; it now keeps ``http_keep_alive_seconds``, 75). The benchmark's clients let theirs go first
# whatever the server's setting.
CLIENT_KEEPALIVE = 3.0


def client_connector(limit: int) -> aiohttp.TCPConnector:
    """The connector of the benchmark's own HTTP clients (the API, the receiver's control routes)."""
    return aiohttp.TCPConnector(limit=limit, keepalive_timeout=CLIENT_KEEPALIVE)


BENCH_DIR = Path(__file__).resolve().parent
CACHE_DIR = BENCH_DIR / ".cache"
LOG_DIR = CACHE_DIR / "logs"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def spawn(args: list[str], env: dict[str, str], log_name: str) -> subprocess.Popen[bytes]:
    """A child in its own session, killed with us, its output in bench/.cache/logs/<log_name>.log."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    out = open(LOG_DIR / f"{log_name}.log", "ab")  # noqa: SIM115 - owned by the child
    try:
        return subprocess.Popen(
            args,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    finally:
        out.close()


def service_env(stores: EmbeddedStores, secret_key: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        **stores.service_env(),
        "WEBHOOKS_SECRET_KEYS": secret_key,
        "WEBHOOKS_ALLOW_HTTP": "true",
        "WEBHOOKS_ALLOW_PRIVATE_DESTINATIONS": "true",
        "WEBHOOKS_LOG_LEVEL": "WARNING",
        "WEBHOOKS_LOG_FORMAT": "text",
        **extra,
    }


@dataclass
class Stack:
    """SecantusDB + Valkey + API (bench.asgi) + optional worker + receiver, all real processes."""

    data_dir: Path
    stores: EmbeddedStores
    env: dict[str, str]
    api_url: str
    receiver_url: str
    api: subprocess.Popen[bytes]
    receiver: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes] | None = None
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    worker_metrics_port: int = 0  # the stack's own worker serves its metrics here (not P9's extra workers)

    @property
    def worker_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.worker_metrics_port}/metrics"

    def create_account(self, name: str) -> str:
        """`webhooks create-account` (a real CLI process); returns the API key."""
        out = subprocess.run(
            [sys.executable, "-m", "webhooks_cli", "create-account", name],
            env=self.env,
            check=True,
            capture_output=True,
        ).stdout
        key: str = json.loads(out.decode().strip().splitlines()[-1])["apiKey"]
        return key

    def start_worker(self) -> subprocess.Popen[bytes]:
        env = {**self.env, "WEBHOOKS_WORKER_METRICS_PORT": str(self.worker_metrics_port)}
        self.worker = spawn([sys.executable, "-m", "webhooks_cli", "worker"], env, "worker")
        self.children.append(self.worker)
        time.sleep(1.5)  # arq start-up: connect, ensure indexes, first poll
        if self.worker.poll() is not None:
            raise RuntimeError("the worker exited at start-up (see bench/.cache/logs/worker.log)")
        return self.worker

    def stop(self) -> None:
        for proc in reversed(self.children):
            stop(proc, timeout=5)
        self.stores.stop()


@contextlib.contextmanager
def stack(
    data_dir: Path, *, worker: bool = True, secret_key: str | None = None, **extra_env: str
) -> Iterator[Stack]:
    data_dir.mkdir(parents=True, exist_ok=True)
    stores = start_stores(data_dir)
    children: list[subprocess.Popen[bytes]] = []
    try:
        env = service_env(stores, secret_key or Fernet.generate_key().decode(), **extra_env)
        recv_port, api_port = free_port(), free_port()
        receiver = spawn([sys.executable, "-m", "bench.receiver", str(recv_port)], env, "receiver")
        children.append(receiver)
        api = spawn([sys.executable, "-m", "bench.asgi", str(api_port)], env, "api")
        children.append(api)
        wait_for_port(recv_port, receiver, "the receiver")
        wait_for_port(api_port, api, "the API", timeout=60)
        running = Stack(
            data_dir,
            stores,
            env,
            f"http://127.0.0.1:{api_port}",
            f"http://127.0.0.1:{recv_port}",
            api,
            receiver,
            children=children,
            worker_metrics_port=free_port(),
        )
        if worker:
            running.start_worker()
    except BaseException:
        for proc in reversed(children):
            stop(proc, timeout=5)
        stores.stop()
        raise
    try:
        yield running
    finally:
        running.stop()


class GraphQL:
    """A GraphQL-over-HTTP client on one keep-alive aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, url: str, api_key: str) -> None:
        self.session = session
        self.url = url + "/graphql"
        self.headers = {"Authorization": f"Bearer {api_key}"}

    async def __call__(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        async with self.session.post(
            self.url, json={"query": query, "variables": variables or {}}, headers=self.headers
        ) as resp:
            body: dict[str, Any] = await resp.json()
        if body.get("errors"):
            raise RuntimeError(f"GraphQL errors: {body['errors']}")
        data: dict[str, Any] = body["data"]
        return data


class ReceiverControl:
    """Talks to the receiver process's control endpoints."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def register(self, path: str, secret: str) -> None:
        async with self.session.post(self.url + "/_register", json={"path": path, "secret": secret}) as r:
            r.raise_for_status()

    async def stats(self) -> dict[str, int]:
        async with self.session.get(self.url + "/_stats") as r:
            data: dict[str, int] = await r.json()
            return data

    async def by_path(self) -> dict[str, int]:
        """Requests received per path so far."""
        async with self.session.get(self.url + "/_by_path") as r:
            data: dict[str, int] = await r.json()
            return data

    async def arrivals(self, since: int = 0, path: str | None = None) -> list[list[Any]]:
        """[[delivery id, arrival time.time(), path, valid], ...] from index ``since`` (only ``path``'s)."""
        query = f"?since={since}" + (f"&path={path}" if path else "")
        async with self.session.get(self.url + "/_arrivals" + query) as r:
            data: list[list[Any]] = await r.json()
            return data


CREATE = """
mutation($input: CreateWebhookInput!) {
  createWebhook(input: $input) { webhook { id } secret errors { field code message } }
}"""

PUBLISH = """
mutation($input: PublishEventInput!) {
  publishEvent(input: $input) { event { id deliveries { id } } errors { field code message } }
}"""


def publish_input(n: int = 0) -> dict[str, Any]:
    return {
        "event": "JOB_APPLICATION_CREATED",
        "log": {
            "action": "create_application",
            "resourceType": "job_application",
            "resourceId": "507f1f77bcf86cd799439011",
            "userId": "507f191e810c19729de860ea",
            "userName": "John Doe",
            "userEmail": "john@example.com",
        },
        "details": {
            "method": "POST",
            "path": "/job-applications",
            "candidateName": f"Jane Smith {n}",
            "jobTitle": "Senior Developer",
        },
    }


async def create_webhooks(gql: GraphQL, recv: ReceiverControl, paths: list[str]) -> list[str]:
    """One webhook per receiver path (secret registered with the receiver); returns webhook ids."""
    ids = []
    for i, path in enumerate(paths):
        data = (
            await gql(
                CREATE,
                {
                    "input": {
                        "name": f"bench {i}",
                        "url": recv.url + path,
                        "events": ["JOB_APPLICATION_CREATED"],
                    }
                },
            )
        )["createWebhook"]
        if data["errors"]:
            raise RuntimeError(f"createWebhook: {data['errors']}")
        await recv.register(path, data["secret"])
        ids.append(data["webhook"]["id"])
    return ids


async def publish(gql: GraphQL, n: int = 0) -> dict[str, Any]:
    data = (await gql(PUBLISH, {"input": publish_input(n)}))["publishEvent"]
    if data["errors"]:
        raise RuntimeError(f"publishEvent: {data['errors']}")
    event: dict[str, Any] = data["event"]
    return event
