"""The embedded MongoDB (SecantusDB), as ``webhooks dev``, the tests and the benchmarks run it:
``python -m webhooks_cli.secantus_server --port PORT --storage-path DIR``.

SecantusDB's own launcher, with one change: its TTL monitor is off. That monitor wakes every minute and, for
every collection with a TTL index, reads and decodes every document while holding the store's one lock, so
every command waits: measured here, 1.6 s with 100,000 deliveries stored (0.4 s with 20,000), every minute,
and growing with the data. Its configuration file has a key for the interval, which its launcher does not
pass on. The worker's sweeper deletes expired documents instead, a few hundred per tick, through the TTL
indexes (``WEBHOOKS_RETENTION_SWEEP``, which ``webhooks dev`` turns on; ``webhooks.repositories.expiry``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m webhooks_cli.secantus_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--storage-path", required=True)
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from secantus.server import SecantusDBServer

    server = SecantusDBServer(
        host=args.host,
        port=args.port,
        storage_path=args.storage_path,
        enable_test_commands=False,
        ttl_sweep_seconds=0,
    )

    def handle_signal(signum: int, frame: FrameType | None) -> None:
        server.stop()
        sys.exit(0)

    signal.signal(signal.SIGINT, handle_signal)
    signal.signal(signal.SIGTERM, handle_signal)
    server.start()
    server.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
