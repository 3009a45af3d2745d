"""A worker process that loses Redis starts a fresh worker in the same process, and the lost one stops.

arq's own close gives up at its first Redis call when Redis is gone, before the shutdown hook; the old
dispatcher then went on claiming beside the new one, with connections that were closing, and the attempts
it claimed failed again at every sweep (seen in the Sentinel failover test). Real parts: a Valkey killed
and started again on its port (empty, as after a crash without persistence), a `webhooks worker` process,
the API, MongoDB and a loopback receiver.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import make_settings
from tests.delivery_support import create_webhook, publish, wait_for_status
from tests.receiver import Receiver
from tests.support import run_stack, service_env
from webhooks_cli.embedded import free_port, spawn, start_valkey, stop, valkey_command, wait_for_port


def read(log: Path) -> str:
    return log.read_text(errors="replace")


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "webhooks_cli", "worker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


async def wait_for_text(log: Path, text: str, count: int = 1, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while read(log).count(text) < count:
        assert time.monotonic() < deadline, f"the worker never logged {text!r} {count} times"
        await asyncio.sleep(0.1)


@pytest.mark.timeout(180)
async def test_a_worker_that_lost_redis_stops_before_it_starts_again(
    mongodb_url: str, receiver: Receiver, tmp_path: Path
) -> None:
    # given a worker process on its own Valkey, delivering
    valkey = start_valkey(tmp_path / "valkey", appendonly=False)
    port = urlsplit(valkey.url).port
    assert port is not None
    settings = make_settings(
        mongodb_url, tmp_path / "data", redis_url=valkey.url, sweep_interval=1, sweep_grace=1
    )
    log = tmp_path / "worker.log"
    restarted: subprocess.Popen[bytes] | None = None
    # (with its metrics endpoint on, as deploy/kubernetes has it: the worker started again keeps serving it)
    metrics_port = free_port()
    env = service_env(
        settings,
        WEBHOOKS_SWEEP_INTERVAL="1",
        WEBHOOKS_SWEEP_GRACE="1",
        WEBHOOKS_WORKER_METRICS_PORT=str(metrics_port),
    )
    worker = start_worker(env, log)
    try:
        async with run_stack(settings, worker=False) as stack:
            account = await stack.account()
            path = f"/restart/{uuid.uuid4().hex[:6]}"
            await create_webhook(account.gql, receiver.url(path))
            first = (await publish(account.gql))["event"]["deliveries"][0]["id"]
            await wait_for_status(account.gql, first, "SUCCEEDED", timeout=60)

            # when its Valkey dies and comes back, empty, on the same port
            valkey.process.send_signal(signal.SIGKILL)
            valkey.process.wait(10)
            await wait_for_text(log, "worker lost Redis")
            restarted = spawn(valkey_command(port, tmp_path / "valkey", appendonly=False), quiet=True)
            wait_for_port(port, restarted, "Valkey")
            await wait_for_text(log, "worker started", count=2)

            # then the lost worker stopped before the new one started, and every new delivery arrives
            text = read(log)
            assert text.index("worker stopped") < text.rindex("worker started")
            later = [(await publish(account.gql))["event"]["deliveries"][0]["id"] for _ in range(5)]
            done = await asyncio.gather(
                *(wait_for_status(account.gql, d, "SUCCEEDED", timeout=60) for d in later)
            )
            assert [d["status"] for d in done] == ["SUCCEEDED"] * 5
            assert "after close" not in read(log)
            async with httpx.AsyncClient() as http:
                scraped = await http.get(f"http://127.0.0.1:{metrics_port}/metrics")
            assert scraped.status_code == 200 and "webhooks_" in scraped.text
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
        if restarted is not None:
            stop(restarted)
        valkey.stop()
