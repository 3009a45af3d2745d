"""Production connection shapes (docs/production.md): MongoDB replica-set URLs, and the start-up index
creation that every API and worker process runs at once."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pymongo import AsyncMongoClient
from pymongo.uri_parser import parse_uri

from webhooks.db import INDEXES, connect
from webhooks.settings import Settings
from webhooks_cli.embedded import secantus_url

ROOT = Path(__file__).resolve().parents[1]


def documented_replica_set_url() -> str:
    text = (ROOT / "docs" / "production.md").read_text()
    match = re.search(r"WEBHOOKS_MONGODB_URL=(mongodb://\S+replicaSet=\S+)", text)
    assert match, "docs/production.md documents the replica-set URL"
    return match.group(1).strip("'\"`")


def test_the_documented_replica_set_url_asks_for_majority_writes_and_retryable_writes() -> None:
    # given the URL shape docs/production.md tells operators to use
    url = documented_replica_set_url()
    options = parse_uri(url)["options"]
    # then it names the replica set, acknowledges writes on a majority, and retries writes across failovers
    assert options["replicaSet"] == "rs0"
    assert options["w"] == "majority"
    assert options["retryWrites"] is True
    assert len(parse_uri(url)["nodelist"]) == 3
    # and the client the service builds from it keeps those options
    client = connect(Settings(mongodb_url=url))
    assert client.options.retry_writes is True
    assert client.options.write_concern.document == {"w": "majority"}
    assert client.options.replica_set_name == "rs0"


def test_the_embedded_store_keeps_retryable_writes_off(mongodb_url: str) -> None:
    # SecantusDB (dev and tests) has no cheap retryable writes: its URL switches them off
    assert parse_uri(mongodb_url)["options"]["retryWrites"] is False
    assert parse_uri(secantus_url(27017))["options"]["retryWrites"] is False


START = """
import asyncio, sys
from webhooks.core import open_store
from webhooks.settings import Settings

async def main() -> None:
    async with open_store(Settings(mongodb_url=sys.argv[1], mongodb_database=sys.argv[2])):
        pass

asyncio.run(main())
"""


async def test_many_processes_starting_at_once_create_every_index_exactly_once(mongodb_url: str) -> None:
    # given an empty database and 4 processes starting together (as a rollout starts API and worker pods)
    database = f"startup_{uuid.uuid4().hex[:8]}"
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            START,
            mongodb_url,
            database,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    results = [await p.communicate() for p in procs]
    # then every one started (no start-up race fails a process)
    assert [p.returncode for p in procs] == [0] * 4, [err.decode()[-500:] for _, err in results]
    # and every index exists once, as declared
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongodb_url)
    try:
        for collection, models in INDEXES.items():
            names = [ix["name"] async for ix in await client[database][collection].list_indexes()]
            declared = [m.document["name"] for m in models]
            assert sorted(n for n in names if n != "_id_") == sorted(declared), collection
    finally:
        await client.drop_database(database)
        await client.close()


HOLD = """
import asyncio, logging, sys
from webhooks.core import open_store
from webhooks.settings import Settings

logging.basicConfig(level=logging.INFO, stream=sys.stderr)


async def main() -> None:
    async with open_store(Settings(mongodb_url=sys.argv[1], mongodb_database=sys.argv[2])):
        pass

asyncio.run(main())
"""


async def test_indexes_are_created_by_one_process_at_a_time(mongodb_url: str) -> None:
    # given another process holding the start-up lock of an empty database
    database = f"startup_{uuid.uuid4().hex[:8]}"
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongodb_url)
    locks = client[database]["locks"]
    await locks.insert_one(
        {"_id": "ensure_indexes", "owner": "someone else", "until": datetime.now(UTC) + timedelta(minutes=1)}
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLD, mongodb_url, database, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        # when a process starts, it says it waits for the holder
        assert proc.stderr is not None
        async with asyncio.timeout(60):
            while b"another process is creating the indexes" not in await proc.stderr.readline():
                pass
        # then it has created nothing meanwhile
        assert "deliveries" not in await client[database].list_collection_names()
        # and once the holder lets go, it creates every index and starts
        await locks.delete_one({"_id": "ensure_indexes"})
        async with asyncio.timeout(60):
            await proc.wait()
        assert proc.returncode == 0
        names = [ix["name"] async for ix in await client[database]["deliveries"].list_indexes()]
        assert sorted(n for n in names if n != "_id_") == sorted(
            m.document["name"] for m in INDEXES["deliveries"]
        )
    finally:
        if proc.returncode is None:
            proc.kill()
        await client.drop_database(database)
        await client.close()
