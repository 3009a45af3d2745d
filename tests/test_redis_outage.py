"""While Redis is down, the product's backend can still publish: MongoDB holds the event, and the worker's
sweeper queues its attempts once Redis is back."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.conftest import make_settings
from tests.delivery_support import create_webhook, publish, wait_for_status
from tests.receiver import Receiver
from tests.support import run_stack, run_worker
from webhooks_cli.embedded import spawn, start_valkey, stop, valkey_command, wait_for_port


async def test_a_publish_while_redis_is_down_is_answered_and_delivered_once_redis_is_back(
    mongodb_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    # given an API whose Redis is up while the customer sets up a webhook
    valkey = start_valkey(tmp_path / "valkey", appendonly=False)
    port = int(valkey.url.rsplit(":", 1)[1].split("/")[0])
    settings = make_settings(mongodb_url, tmp_path, redis_url=valkey.url, sweep_interval=0.2, sweep_grace=0.5)
    restarted = None
    try:
        async with run_stack(settings, worker=False) as stack:
            account = await stack.account()
            path = f"/outage/{uuid.uuid4().hex[:8]}"
            await create_webhook(account.gql, receiver.url(path))
            # when Redis stops and the backend publishes an event (rate limit counting needs Redis)
            valkey.stop()
            published = await publish(account.gql)
            # then the publish is answered with the stored event and its pending delivery, not an error
            assert published["errors"] == []
            (pending,) = published["event"]["deliveries"]
            assert pending["status"] == "PENDING"
            # and once Redis is back, a worker delivers it
            restarted = spawn(valkey_command(port, tmp_path / "valkey", appendonly=False), quiet=True)
            wait_for_port(port, restarted, "Valkey")
            async with run_worker(settings):
                await wait_for_status(account.gql, pending["id"], "SUCCEEDED", timeout=30)
            assert [r.headers["X-Webhook-Delivery"] for r in receiver.received[path]] == [pending["id"]]
    finally:
        valkey.stop()
        if restarted is not None:
            stop(restarted)
