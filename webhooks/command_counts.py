"""Opt-in counting of the store's work, for the benchmark (``bench/``, figure P1): never on in production.

With ``WEBHOOKS_BENCH_COUNT_COMMANDS=<directory>`` set, every MongoDB client made by ``webhooks.db.connect``
gets one process-wide ``CommandListener`` that counts the commands this process sends (round trips, by
command name and collection, as ``insert:events``) and the documents they write (inserts: the documents
sent; updates: the reply's ``nModified`` plus upserts; deletes and findAndModify: the reply's ``n``). A
daemon thread writes the totals to ``<directory>/<pid>.json`` every ``DUMP_EVERY`` seconds (atomically, with
the time of the dump), and once more at exit, so the benchmark reads them from outside the process.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pymongo import monitoring

ENV = "WEBHOOKS_BENCH_COUNT_COMMANDS"
DUMP_EVERY = 1.0  # seconds
WRITES = frozenset({"insert", "update", "delete", "findAndModify"})
IGNORED = frozenset({"hello", "isMaster", "ismaster", "ping", "endSessions", "saslStart", "saslContinue"})


class CommandCounts(monitoring.CommandListener):
    """Commands by name and documents written by name, totals since the process started."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.commands: Counter[str] = Counter()
        self.written: Counter[str] = Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        name = event.command_name
        if name in IGNORED:
            return
        collection = event.command.get(name)
        with self._lock:
            self.commands[f"{name}:{collection}" if isinstance(collection, str) else name] += 1
            if name == "insert":
                self.written[name] += len(event.command.get("documents") or ())

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        name = event.command_name
        if name not in WRITES or name == "insert":
            return
        reply = event.reply
        if name == "update":
            n = int(reply.get("nModified", 0)) + len(reply.get("upserted") or ())
        elif name == "findAndModify":
            n = 1 if reply.get("value") is not None else 0
        else:
            n = int(reply.get("n", 0))
        with self._lock:
            self.written[name] += n

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "pid": os.getpid(),
                "at": time.time(),
                "commands": dict(self.commands),
                "written": dict(self.written),
            }


_counts: CommandCounts | None = None


def _dump(path: Path, counts: CommandCounts) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(counts.snapshot()))
    os.replace(tmp, path)


def _dumper(path: Path, counts: CommandCounts) -> None:
    while True:
        time.sleep(DUMP_EVERY)
        with contextlib.suppress(OSError):
            _dump(path, counts)


def listeners() -> list[monitoring.CommandListener]:
    """The listener to attach to a client when the benchmark asked for counts (the same one for every
    client of the process), else none."""
    global _counts
    directory = os.environ.get(ENV)
    if not directory:
        return []
    if _counts is None:
        _counts = CommandCounts()
        path = Path(directory) / f"{os.getpid()}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        threading.Thread(target=_dumper, args=(path, _counts), name="command-counts", daemon=True).start()
        atexit.register(_dump, path, _counts)
    return [_counts]
