"""P4's subscribers, in their own process: ``python -m bench.wsclients '<json spec>'``.

Opens ``connections`` graphql-transport-ws connections (``websockets``) to the API, each with
``per_connection`` ``deliveryAttempts`` subscriptions, prints ``READY`` once all are sent, records the
``time.time()`` at which every subscription receives every attempt, and on a line on stdin writes one JSON
object to the file ``spec["out"]``: ``{"times": {attempt id: [t, ...]}, "dropped": n, "errors": [...]}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import defaultdict
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

QUERY = "subscription { deliveryAttempts { id deliveryId number } }"


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    times: dict[str, list[float]] = defaultdict(list)
    ended: list[str] = []
    sockets: list[ClientConnection] = []

    async def open_one(c: int) -> None:
        ws = await connect(
            spec["url"],
            subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
            max_size=1 << 20,
            ping_interval=None,
            open_timeout=30,
        )
        await ws.send(
            json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {spec['key']}"}})
        )
        ack = json.loads(await ws.recv())
        if ack.get("type") != "connection_ack":
            raise RuntimeError(f"no connection_ack: {ack}")
        for s in range(spec["per_connection"]):
            await ws.send(json.dumps({"id": f"{c}-{s}", "type": "subscribe", "payload": {"query": QUERY}}))
        sockets.append(ws)

    async def read(ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                now = time.time()
                msg = json.loads(raw)
                kind = msg.get("type")
                if kind == "next":
                    data = msg["payload"].get("data") or {}
                    attempt = data.get("deliveryAttempts")
                    if attempt:
                        times[attempt["id"]].append(now)
                    else:
                        ended.append(f"error payload: {msg['payload']}")
                elif kind == "ping":
                    await ws.send(json.dumps({"type": "pong"}))
                elif kind in ("error", "complete"):
                    ended.append(f"{kind}: {msg}")
        except Exception as exc:
            ended.append(f"connection closed: {exc!r}")

    sem = asyncio.Semaphore(50)

    async def guarded(c: int) -> None:
        async with sem:
            await open_one(c)

    await asyncio.gather(*(guarded(c) for c in range(spec["connections"])))
    readers = [asyncio.create_task(read(ws)) for ws in sockets]
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    for ws in sockets:
        await ws.close()
    await asyncio.gather(*readers, return_exceptions=True)
    dropped = [e for e in ended if not e.startswith("connection closed: ConnectionClosedOK")]
    return {"times": times, "dropped": len(dropped), "errors": dropped[:5]}


def main() -> None:
    import uvloop

    spec = json.loads(sys.argv[1])
    result = uvloop.run(run(spec))
    # The result (every receive time of every subscriber) can be megabytes: a file, not a pipe line.
    with open(spec["out"], "w") as fh:
        json.dump(result, fh)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
