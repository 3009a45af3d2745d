"""P6: the delivery log's first and middle page with N stored deliveries versus 1,000."""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from bench import dataset
from bench.figures import Result, med
from bench.procs import GraphQL, stack

PAGE = """query($w: ID, $after: String) {
  deliveries(webhookId: $w, first: 20, after: $after) {
    edges { cursor node { id status createdAt } } pageInfo { hasNextPage endCursor }
  }
}"""


async def _timed(gql: GraphQL, webhook: str, after: str | None) -> float:
    t0 = time.perf_counter()
    data = await gql(PAGE, {"w": webhook, "after": after})
    took = (time.perf_counter() - t0) * 1000
    if len(data["deliveries"]["edges"]) != 20:
        raise RuntimeError(f"page had {len(data['deliveries']['edges'])} deliveries, expected 20")
    return took


async def p6(n: int, log: Any, emit: Any, rounds: int = 7) -> None:
    meta = await dataset.ensure(n, log)
    with stack(dataset.cache_dir(n) / "data", worker=False, secret_key=meta["secret_key"]) as running:
        async with aiohttp.ClientSession() as session:
            large = GraphQL(session, running.api_url, meta["large"]["key"])
            small = GraphQL(session, running.api_url, meta["small"]["key"])
            cases = {
                ("first", "large"): (large, meta["large"]["webhook"], None),
                ("first", "small"): (small, meta["small"]["webhook"], None),
                ("middle", "large"): (large, meta["large"]["webhook"], meta["large"]["middle"]),
                ("middle", "small"): (small, meta["small"]["webhook"], meta["small"]["middle"]),
            }
            for gql, webhook, after in cases.values():  # warm-up (connections, caches)
                await _timed(gql, webhook, after)
            times: dict[tuple[str, str], list[float]] = {k: [] for k in cases}
            for _ in range(rounds):
                for k, (gql, webhook, after) in cases.items():
                    times[k].append(await _timed(gql, webhook, after))
    for page in ("first", "middle"):
        big, base = med(times[(page, "large")]), med(times[(page, "small")])
        log(
            f"  P6 {page} page: {n:,} -> {sorted(round(t, 1) for t in times[(page, 'large')])} ms; "
            f"1,000 -> {sorted(round(t, 1) for t in times[(page, 'small')])} ms"
        )
        emit(
            Result(
                f"P6 {page} page, {n:,} deliveries",
                big,
                "ms",
                base,
                "ms with 1,000 deliveries",
                big / base,
                "<= 1.5x",
                f"deliveries(webhookId, first: 20) over GraphQL; webhook holds "
                f"{meta['large']['count']:,} vs {meta['small']['count']:,}",
            )
        )
