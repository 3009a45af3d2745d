"""A load generator process: ``python -m bench.loadgen '<json spec>'``; prints one JSON result line.

Spec: ``url``, ``method`` (GET/POST), ``headers``, ``body`` (text), ``concurrency``, ``duration`` (s),
``secret`` (optional: sign each body like the worker does, hex HMAC-SHA256 in X-Webhook-Signature),
``uvloop`` (bool). Keep-alive connections, one per concurrent loop (aiohttp ``TCPConnector(limit=N)``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sys
import time
from typing import Any

import aiohttp


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    url, method = spec["url"], spec.get("method", "GET")
    body = spec.get("body", "").encode()
    headers = dict(spec.get("headers", {}))
    secret = spec.get("secret")
    concurrency, duration = int(spec["concurrency"]), float(spec["duration"])
    warmup = float(spec.get("warmup", 0.5))
    counts = {"ok": 0, "errors": 0}
    measuring = False
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        stop_at = time.perf_counter() + warmup + duration

        async def loop() -> None:
            while time.perf_counter() < stop_at:
                hdrs = headers
                if secret:
                    hdrs = {
                        **headers,
                        "X-Webhook-Signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
                    }
                try:
                    async with session.request(method, url, data=body or None, headers=hdrs) as resp:
                        await resp.read()
                        good = 200 <= resp.status < 300
                except aiohttp.ClientError:
                    good = False
                if measuring:
                    counts["ok" if good else "errors"] += 1

        tasks = [asyncio.create_task(loop()) for _ in range(concurrency)]
        await asyncio.sleep(warmup)
        measuring = True
        started = time.perf_counter()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    return {**counts, "seconds": elapsed, "rps": counts["ok"] / elapsed}


def main() -> None:
    spec = json.loads(sys.argv[1])
    if spec.get("uvloop"):
        import uvloop

        result = uvloop.run(run(spec))
    else:
        result = asyncio.run(run(spec))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
