"""Operations: health/readiness, /metrics, worker heartbeats and `worker --check`, JSON logs without secrets.

Real processes where it matters: private SecantusDB and Valkey servers that the readiness test stops and
restarts (never the shared ones), and worker subprocesses for the heartbeat and log tests.
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import websockets
from prometheus_client.parser import text_string_to_metric_families
from pymongo import AsyncMongoClient
from pymongo.errors import BulkWriteError
from websockets import Subprotocol

from graphql_api.request_ids import new_request_id
from tests.conftest import make_settings
from tests.delivery_support import create_webhook, publish, wait_for_status
from tests.receiver import run_receiver, status
from tests.support import GraphQLClient, run_stack, service_env
from webhooks.logging_setup import JsonFormatter, configure_logging
from webhooks.settings import Settings
from webhooks_cli.embedded import free_port, spawn, stop, valkey_binary, wait_for_port
from workers import health

ROOT = Path(__file__).resolve().parent.parent


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a `webhooks worker` subprocess that shares ``settings``' stores and queue."""
    return service_env(
        settings, WEBHOOKS_LOG_FORMAT="json", WEBHOOKS_WORKER_HEARTBEAT_INTERVAL="0.5", **extra
    )


def cli(*args: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhooks_cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_worker(env: dict[str, str], log_path: Path | None = None) -> subprocess.Popen[bytes]:
    out = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "webhooks_cli", "worker"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
        )
    finally:
        if log_path is not None:
            out.close()  # type: ignore[union-attr]


def start_api(env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "webhooks_cli", "serve", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
        )


def unique_settings(mongodb_url: str, tmp_path: Path, **overrides: object) -> Settings:
    return make_settings(mongodb_url, tmp_path, queue_name=f"test-ops:{uuid.uuid4().hex[:8]}", **overrides)


# --------------------------------------------------------------------------------------- health


async def test_healthz_and_readyz(http: httpx.AsyncClient) -> None:
    live = await http.get("/healthz")
    assert live.status_code == 200 and live.json() == {"status": "ok"}
    ready = await http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ok", "checks": {"mongodb": "ok", "redis": "ok"}}


async def test_request_id_is_echoed_or_made(http: httpx.AsyncClient) -> None:
    sent = await http.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert sent.headers["X-Request-ID"] == "abc-123"
    made = await http.get("/healthz", headers={"X-Request-ID": "not ok; <script>"})
    assert made.headers["X-Request-ID"] not in ("", "not ok; <script>")


def test_made_request_ids_are_distinct_in_a_process_and_in_a_forked_one() -> None:
    # given ids made by this process
    ours = [new_request_id() for _ in range(1_000)]
    # when a forked process (a pre-fork server's worker) makes one
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report one id and leave at once
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    theirs = os.read(read, 64).decode()
    os.close(read)
    # then every id is 16 hex digits, and none repeats, across the fork either
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in [*ours, theirs])
    assert len(set(ours)) == len(ours) and theirs not in ours
    assert theirs[:8] != ours[-1][:8]  # the child has its own prefix, not its parent's counter


async def _wait_ready(http: httpx.AsyncClient, code: int, timeout: float = 40.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = await http.get("/readyz")
        if response.status_code == code:
            body: dict[str, Any] = response.json()
            return body
        assert time.monotonic() < deadline, f"/readyz stayed {response.status_code}: {response.text}"
        await asyncio.sleep(0.2)


async def test_readiness_follows_mongodb_and_redis(mongodb_url: str, tmp_path: Path) -> None:
    mongo_port, redis_port = free_port(), free_port()

    def start_mongo() -> subprocess.Popen[bytes]:
        proc = spawn(
            [
                sys.executable,
                "-m",
                "secantus",
                "--host",
                "127.0.0.1",
                "--port",
                str(mongo_port),
                "--storage-path",
                str(tmp_path / "mongo"),
                "--log-level",
                "WARNING",
            ],
            quiet=True,
        )
        wait_for_port(mongo_port, proc, "SecantusDB")
        return proc

    def start_redis() -> subprocess.Popen[bytes]:
        proc = spawn(
            [
                valkey_binary(),
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            quiet=True,
        )
        wait_for_port(redis_port, proc, "Valkey")
        return proc

    (tmp_path / "mongo").mkdir()
    procs = {"mongodb": await asyncio.to_thread(start_mongo), "redis": await asyncio.to_thread(start_redis)}
    settings = make_settings(
        f"mongodb://127.0.0.1:{mongo_port}/?directConnection=true&retryWrites=false",
        tmp_path / "data",
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
    )
    Starter = Callable[[], subprocess.Popen[bytes]]
    starters: dict[str, Starter] = {"mongodb": start_mongo, "redis": start_redis}
    try:
        async with run_stack(settings, worker=False) as stack:
            await _wait_ready(stack.http, 200)
            for down, up in (("redis", "mongodb"), ("mongodb", "redis")):
                await asyncio.to_thread(stop, procs[down])
                body = await _wait_ready(stack.http, 503)
                assert body["status"] == "unavailable"
                assert body["checks"][down].startswith("error"), body
                assert body["checks"][up] == "ok", body
                procs[down] = await asyncio.to_thread(starters[down])  # same port, same data
                body = await _wait_ready(stack.http, 200)
                assert body == {"status": "ok", "checks": {"mongodb": "ok", "redis": "ok"}}
    finally:
        for proc in procs.values():
            stop(proc)


# -------------------------------------------------------------------------------------- metrics


def sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


async def test_metrics_move_with_deliveries(mongodb_url: str, tmp_path: Path) -> None:
    settings = unique_settings(mongodb_url, tmp_path, retry_schedule=(0.0,))
    async with run_receiver() as receiver, run_stack(settings) as stack:
        account = await stack.account()
        await create_webhook(account.gql, receiver.url("/ok"), name="ok")
        await create_webhook(account.gql, receiver.url("/down", status(503)), name="down")
        before = (await stack.http.get("/metrics")).text

        payload = await publish(account.gql)
        assert payload["errors"] == []
        for d in payload["event"]["deliveries"]:
            await wait_for_status(account.gql, d["id"], "SUCCEEDED", "FAILED")
        # (counted just after the outcome is stored: the store is read first, then the counters waited for)
        event = "job_application_created"
        async with asyncio.timeout(10):
            while True:
                response = await stack.http.get("/metrics")
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/plain")
                after = response.text
                if all(
                    sample(after, "webhooks_deliveries_total", status=s, event=event)
                    > sample(before, "webhooks_deliveries_total", status=s, event=event)
                    for s in ("succeeded", "failed")
                ):
                    break
                await asyncio.sleep(0.05)

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("webhooks_deliveries_total", status="succeeded", event=event) == 1
    assert moved("webhooks_deliveries_total", status="failed", event=event) == 1
    assert moved("webhooks_delivery_attempts_total", outcome="2xx") == 1
    assert moved("webhooks_delivery_attempts_total", outcome="5xx") == 1
    assert moved("webhooks_delivery_attempt_duration_seconds_count") == 2
    assert moved("webhooks_delivery_dispatch_delay_seconds_count") == 2
    assert moved("webhooks_graphql_operations_total", type="mutation", outcome="ok") >= 1
    assert moved("webhooks_graphql_operation_duration_seconds_count", type="mutation") >= 1
    # every coalesced step served these calls in timed batches: the publish, and each delivery's load,
    # slot release and record (the failing one's too)
    assert moved("webhooks_batch_items_total", step="publish") == 1
    assert moved("webhooks_batch_seconds_count", step="publish") == 1
    for step in ("load", "release", "record"):
        served = moved("webhooks_batch_items_total", step=step)
        batches = moved("webhooks_batch_seconds_count", step=step)
        assert served >= 2 and 1 <= batches <= served, step
    names = {f.name for f in text_string_to_metric_families(after)}
    assert {
        "webhooks_queue_depth",
        "webhooks_ordered_waiting",
        "webhooks_deliveries_overdue",
        "webhooks_graphql_subscriptions_open",
        "webhooks_webhooks_auto_disabled",
    } <= names
    # Bounded labels only: no ids or URLs anywhere in the exposition.
    assert "127.0.0.1" not in after and account.id not in after


async def test_a_scrape_shows_the_api_processs_garbage_collector_pauses(
    mongodb_url: str, tmp_path: Path
) -> None:
    settings = unique_settings(mongodb_url, tmp_path)
    async with run_stack(settings, worker=False) as stack:

        async def full_passes() -> float:
            text = (await stack.http.get("/metrics")).text
            return sample(text, "webhooks_gc_pause_seconds_count", generation="2")

        # given a started API process and what its metrics said
        before = await full_passes()
        # when the process makes a full collection
        gc.collect()
        # then the next scrape counts it
        assert await full_passes() >= before + 1


async def test_a_request_naming_an_operation_its_document_lacks_counts_as_an_error(
    http: httpx.AsyncClient,
) -> None:
    # given the API, and a client that names an operation its document does not have
    def counted(text: str, outcome: str) -> float:
        return sample(
            text, "webhooks_graphql_operations_total", operation="NotInTheDocument", outcome=outcome
        )

    before = (await http.get("/metrics")).text
    # when it sends the request
    answer = await http.post(
        "/graphql", json={"query": "{ eventTypes { name } }", "operationName": "NotInTheDocument"}
    )
    # then it is refused, and the operation metrics count an error, not a success
    assert answer.json()["errors"], answer.text
    after = (await http.get("/metrics")).text
    assert counted(after, "error") == counted(before, "error") + 1
    assert counted(after, "ok") == counted(before, "ok")


def test_operation_label_is_bounded() -> None:
    from webhooks import metrics

    assert metrics.operation_label(None) == "anonymous"
    assert metrics.operation_label("Get-Thing!") == "Get_Thing_"
    assert len(metrics.operation_label("x" * 500)) == 64
    assert metrics.attempt_outcome("timeout", None) == "timeout"
    assert metrics.attempt_outcome("blocked_destination", None) == "blocked"
    assert metrics.attempt_outcome("redirect", 302) == "3xx"
    assert metrics.attempt_outcome("http_status", 404) == "4xx"
    assert metrics.event_label("https://evil.example/") == "other"


# ---------------------------------------------------------------------------- worker liveness


async def test_worker_check(mongodb_url: str, tmp_path: Path) -> None:
    settings = unique_settings(mongodb_url, tmp_path)
    env = worker_env(settings)
    nobody = await asyncio.to_thread(cli, "worker", "--check", env=env)
    assert nobody.returncode != 0
    assert "no worker heartbeat" in nobody.stderr

    worker = start_worker(env, tmp_path / "worker.log")
    try:
        deadline = time.monotonic() + 60
        while True:
            found = await asyncio.to_thread(cli, "worker", "--check", env=env)
            if found.returncode == 0:
                break
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline, found.stderr
            await asyncio.sleep(0.3)
        assert "1 worker(s) alive" in found.stdout
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait, 30) == 0
    finally:
        stop(worker)
    gone = await asyncio.to_thread(cli, "worker", "--check", env=env)
    assert gone.returncode != 0, "a stopped worker removes its heartbeat"


async def test_the_worker_check_reads_one_set_however_many_keys_redis_holds(
    mongodb_url: str, tmp_path: Path
) -> None:
    # given a live worker's heartbeat, and Redis holding many other keys (under load: a hand-off copy per
    # event published in the last two minutes), some of them named like the workers' old heartbeat keys
    settings = unique_settings(mongodb_url, tmp_path)
    redis = aioredis.Redis.from_url(settings.redis_url or "")
    filler = f"{settings.queue_name}:workers:old-host"
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(20_000):
                pipe.set(f"{filler}:{i}", "x", ex=120)
            await pipe.execute()
        await health.beat(redis, settings, health.worker_name("pod-1", 7))
        scans = (await redis.info("commandstats")).get("cmdstat_scan", {}).get("calls", 0)
        # when the check runs
        healthy, message = await health.check(settings)
        # then it finds the worker without walking the keyspace
        assert healthy, message
        assert "1 worker(s) alive" in message
        assert (await redis.info("commandstats")).get("cmdstat_scan", {}).get("calls", 0) == scans
    finally:
        async for key in redis.scan_iter(match=f"{filler}:*", count=1000):
            await redis.delete(key)
        await redis.delete(health.heartbeats_key(settings))
        await redis.aclose()


# ------------------------------------------------------------------------------------------ logs


@pytest.fixture
def captured_json_logs() -> Iterator[io.StringIO]:
    """JSON lines from every logger in this process (the in-process API), as production writes them."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


async def test_json_logs_parse_and_hold_no_secret(
    mongodb_url: str, tmp_path: Path, captured_json_logs: io.StringIO
) -> None:
    settings = unique_settings(mongodb_url, tmp_path)
    worker_log = tmp_path / "worker.log"
    worker = start_worker(worker_env(settings, WEBHOOKS_LOG_LEVEL="DEBUG"), worker_log)
    try:
        async with run_receiver() as receiver, run_stack(settings, worker=False) as stack:
            account = await stack.account()
            webhook_id, secret = await create_webhook(account.gql, receiver.url("/hook"))
            response = await stack.http.post(
                "/graphql",
                json={"query": "query Mine { webhooks { edges { node { id } } } }"},
                headers={"Authorization": f"Bearer {account.api_key}", "X-Request-ID": "ops-test-42"},
            )
            assert response.status_code == 200 and response.headers["X-Request-ID"] == "ops-test-42"
            payload = await publish(account.gql)
            delivery_id = payload["event"]["deliveries"][0]["id"]
            await wait_for_status(account.gql, delivery_id, "SUCCEEDED", timeout=60)
            got = (await receiver.wait_for("/hook", 1))[0]
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait, 30) == 0
    finally:
        stop(worker)

    api_lines = [json.loads(line) for line in captured_json_logs.getvalue().splitlines() if line.strip()]
    worker_text = worker_log.read_text()
    worker_lines = [json.loads(line) for line in worker_text.splitlines() if line.strip()]

    operation = [e for e in api_lines if e.get("operation") == "Mine"]
    assert len(operation) == 1, api_lines
    assert operation[0]["request_id"] == "ops-test-42"
    assert operation[0]["operation_type"] == "query" and operation[0]["outcome"] == "ok"
    assert operation[0]["account_id"] == account.id and operation[0]["duration_ms"] >= 0

    attempts = [e for e in worker_lines if e.get("delivery_id") == delivery_id]
    assert len(attempts) == 1, worker_lines
    assert attempts[0]["webhook_id"] == webhook_id and attempts[0]["attempt"] == 1
    assert attempts[0]["outcome"] == "2xx" and attempts[0]["status_code"] == 200
    assert isinstance(attempts[0]["duration_ms"], int)

    signature_values = [got.headers["X-Webhook-Signature"], got.headers["webhook-signature"]]
    signature_values += [part.split(",", 1)[-1] for part in got.headers["webhook-signature"].split()]
    everything = captured_json_logs.getvalue() + worker_text
    for secret_value in (account.api_key, secret, secret.removeprefix("whsec_"), *signature_values):
        assert secret_value not in everything


async def test_debug_logs_of_the_api_and_the_worker_hold_no_customer_data(
    mongodb_url: str, tmp_path: Path
) -> None:
    # given `webhooks serve` and `webhooks worker` processes at WEBHOOKS_LOG_LEVEL=DEBUG
    settings = unique_settings(mongodb_url, tmp_path)
    env = worker_env(settings, WEBHOOKS_LOG_LEVEL="DEBUG")
    created = cli("create-account", "Debug logs", env=env)
    assert created.returncode == 0, created.stderr
    api_key = json.loads(created.stdout)["apiKey"]
    port = free_port()
    api_log, worker_log = tmp_path / "api.log", tmp_path / "worker.log"
    api = start_api(env, port, api_log)
    worker = start_worker(env, worker_log)
    try:
        wait_for_port(port, api, "the API", timeout=60)
        async with (
            run_receiver() as receiver,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
        ):
            gql = GraphQLClient(http, api_key)
            # when a customer creates a webhook, publishes an event and opens the live feed with its key
            await create_webhook(gql, receiver.url("/customer-path-7f3a"), name="Customer name 7f3a")
            async with websockets.connect(
                f"ws://127.0.0.1:{port}/graphql", subprotocols=[Subprotocol("graphql-transport-ws")]
            ) as ws:
                init = {"type": "connection_init", "payload": {"Authorization": f"Bearer {api_key}"}}
                await ws.send(json.dumps(init))
                assert json.loads(await ws.recv())["type"] == "connection_ack"
                query = "subscription { deliveryAttempts { id } }"
                await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}))
                payload = await publish(gql, details={"candidateName": "Candidate 7f3a"})
                delivery_id = payload["event"]["deliveries"][0]["id"]
                await wait_for_status(gql, delivery_id, "SUCCEEDED", timeout=60)
                assert json.loads(await ws.recv())["type"] == "next"
    finally:
        for proc in (api, worker):
            proc.send_signal(signal.SIGTERM)
        for proc in (api, worker):
            await asyncio.to_thread(proc.wait, 30)
            stop(proc)
    # then the logs have their lines (both processes logged at DEBUG, and the attempt was logged) ...
    logs = api_log.read_text() + worker_log.read_text()
    assert '"level": "debug"' in logs and delivery_id in logs
    # ... but nothing the customer typed or holds: URL, names, payload values, the key or any 16 of its
    # characters (a DEBUG trace of a WebSocket frame quotes the start and end of the frame)
    for typed in ("customer-path-7f3a", "Customer name 7f3a", "Candidate 7f3a"):
        assert typed not in logs, typed
    secret_part = api_key.removeprefix("hbk_")
    for start in range(len(secret_part) - 16):
        assert secret_part[start : start + 16] not in logs


async def test_a_store_error_is_logged_without_the_documents_it_quotes(
    mongodb_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # given the process's logging as configured in production, and a real write error from the store whose
    # details quote the document it refused (here: a duplicate, holding a receiver's answer)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url)
    collection = client["test_scrub"][uuid.uuid4().hex[:8]]
    doc = {"_id": 1, "response_body": "tok_secret_7f3 from a receiver"}
    await collection.insert_one(dict(doc))
    try:
        await collection.insert_many([dict(doc)])
    except BulkWriteError as exc:
        refused: BulkWriteError = exc
    finally:
        await collection.drop()
        await client.close()
    assert "tok_secret_7f3" in str(refused.details)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(json_lines=True, settings=Settings(mongodb_url=mongodb_url))
        # when the worker logs it (as the dispatcher logs an attempt that failed unexpectedly)
        logging.getLogger("workers.dispatcher").error("attempt failed unexpectedly", exc_info=refused)
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    # then the line names the error and its code, with its traceback, but not what the document held
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert "BulkWriteError (code 65)" in line["exc"] and "Traceback" in line["exc"]
    assert "tok_secret_7f3" not in json.dumps(line)
