"""``uv run python -m bench [--only p1,p2] [--quick]``: the performance suite (docs/performance.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from dataclasses import asdict
from typing import Any

import aiohttp
from pymongo import AsyncMongoClient

from bench.figures import COUNTS_DIR, FIGURES, Ctx, Result
from bench.p6 import p6
from bench.p8 import p8
from bench.procs import CACHE_DIR, client_connector, stack
from bench.scale import SCALE_FIGURES

ALL = ["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9", "p10"]
# P2 first: latency and idle CPU on a quiet system
ORDER = ["p2", "p1", "p3", "p4", "p5", "p7", "p8", "p9", "p10", "p6"]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def main_figures(
    selected: list[str],
    quick: bool,
    profile: bool,
    results: list[Result],
    p8_cases: list[str] | None = None,
    p1_events: int | None = None,
) -> None:
    def emit(result: Result) -> None:
        results.append(result)
        print(result.line(), flush=True)

    service = [f for f in ORDER if f in selected and f not in ("p6", "p8")]
    if service:
        data_dir = CACHE_DIR / "run"
        shutil.rmtree(data_dir, ignore_errors=True)
        log("starting SecantusDB, Valkey, the API, one worker and the receiver ...")
        shutil.rmtree(COUNTS_DIR, ignore_errors=True)
        # the API and the worker count their MongoDB commands (webhooks.command_counts) for P1
        with stack(data_dir, WEBHOOKS_BENCH_COUNT_COMMANDS=str(COUNTS_DIR)) as running:
            mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
                running.stores.mongodb_url, tz_aware=True
            )
            try:
                async with aiohttp.ClientSession(connector=client_connector(200)) as session:
                    ctx = Ctx(running, session, mongo, quick, log, profile, emit, p1_events)
                    await ctx.start_feed()
                    try:
                        for name in service:
                            log(f"{name.upper()} ...")
                            t0 = time.perf_counter()
                            try:
                                await {**FIGURES, **SCALE_FIGURES}[name](ctx)
                            except Exception as exc:
                                print(f"{name.upper()}: error ({type(exc).__name__}: {exc})", flush=True)
                            log(f"{name.upper()} took {time.perf_counter() - t0:.0f} s")
                            if running.worker is not None and running.worker.poll() is not None:
                                raise RuntimeError("the worker died (bench/.cache/logs/worker.log)")
                    finally:
                        await ctx.stop_feed()
            finally:
                await mongo.close()
    if "p8" in selected:  # its own stacks: one per case, so no backlog leaks into the next
        log("P8 ...")
        t0 = time.perf_counter()
        p1_rate = next((r.value for r in results if r.name == "P1 throughput"), None)
        await p8(quick, log, emit, p1_rate, p8_cases)
        log(f"P8 took {time.perf_counter() - t0:.0f} s")
    if "p6" in selected:
        log("P6 ...")
        t0 = time.perf_counter()
        try:
            await p6(100_000 if quick else 1_000_000, log, emit)
        except Exception as exc:
            print(f"P6: error ({type(exc).__name__}: {exc})", flush=True)
        log(f"P6 took {time.perf_counter() - t0:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", default=",".join(ALL), help="comma-separated subset, e.g. p1,p2")
    parser.add_argument(
        "--quick", action="store_true", help="fewer events and shorter runs; P6 with 100,000 deliveries"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="P1: record py-spy profiles of the worker and the API into bench/.cache/",
    )
    parser.add_argument(
        "--p1-events",
        type=int,
        default=None,
        help="P1: events per run, each to 10 webhooks (default 200, 100 with --quick)",
    )
    parser.add_argument("--p8-cases", default="", help="P8 subset: dead,dead10k,slow,huge (default: all)")
    args = parser.parse_args()
    selected = [s.strip().lower() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in selected if s not in ALL]
    if unknown:
        parser.error(f"unknown figure(s): {', '.join(unknown)} (choose from {', '.join(ALL)})")
    results: list[Result] = []
    t0 = time.perf_counter()
    p8_cases = [c.strip() for c in args.p8_cases.split(",") if c.strip()] or None
    asyncio.run(main_figures(selected, args.quick, args.profile, results, p8_cases, args.p1_events))
    log(f"done in {time.perf_counter() - t0:.0f} s")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    (CACHE_DIR / ("results-quick.json" if args.quick else "results.json")).write_text(
        json.dumps([asdict(r) for r in results], indent=1)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
