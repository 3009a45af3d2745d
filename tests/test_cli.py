"""The `webhooks` command as a user runs it: real subprocesses."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

from graphql_api.schema import build_schema
from tests.delivery_support import create_webhook, publish
from tests.receiver import Receiver
from tests.support import GraphQLClient
from webhooks.settings import Settings
from webhooks_cli.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent


def code_schema() -> str:
    return build_schema(Settings()).as_str() + "\n"


def test_the_committed_schema_matches_the_code() -> None:
    # given the schema file clients read, when compared with the code's schema, then they are identical
    committed = (ROOT / "schema.graphql").read_text()
    assert committed == code_schema(), (
        "schema.graphql is stale: run `webhooks export-schema -o schema.graphql`"
    )


def test_export_schema_prints_the_schema() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "webhooks_cli", "export-schema"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout == code_schema()


def test_create_account_prints_the_account_id_and_a_key(settings: Settings) -> None:
    env = {
        **os.environ,
        "WEBHOOKS_MONGODB_URL": str(settings.mongodb_url),
        "WEBHOOKS_MONGODB_DATABASE": settings.mongodb_database,
    }
    result = subprocess.run(
        [sys.executable, "-m", "webhooks_cli", "create-account", "Acme Recruiting"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert set(printed) == {"accountId", "apiKey"}
    assert re.fullmatch(r"[0-9a-f]{24}", printed["accountId"])
    assert printed["apiKey"].startswith("hbk_") and len(printed["apiKey"]) > 40


def test_create_account_without_a_database_says_what_to_do() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKS_")}
    result = subprocess.run(
        [sys.executable, "-m", "webhooks_cli", "create-account", "Acme"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode != 0
    assert "WEBHOOKS_MONGODB_URL" in result.stderr


def test_dev_starts_everything_answers_a_query_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    # given `webhooks dev` started as a user would, with nothing but the package installed
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKS_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "webhooks_cli",
            "dev",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        output = _read_until(proc, "Press Ctrl-C", timeout=90)
        # then it prints the GraphiQL URL and a ready API key
        assert f"http://127.0.0.1:{port}/graphql" in output
        key = re.search(r"API key:\s+(\S+)", output)
        assert key is not None
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 4  # SecantusDB, Valkey, API, worker
        # and the key works against the running API
        response = httpx.post(
            f"http://127.0.0.1:{port}/graphql",
            json={"query": "{ eventTypes { name } }"},
            headers={"Authorization": f"Bearer {key.group(1)}"},
            timeout=30,
        )
        assert len(response.json()["data"]["eventTypes"]) == 20  # 16 spec events, 4 operational
        # and a customer portal URL with a fresh session (token in the fragment) that the API accepts
        portal = re.search(rf"Portal:\s+(http://127\.0\.0\.1:{port}/portal#token=(\S+))", output)
        assert portal is not None, output
        assert httpx.get(portal.group(1).split("#")[0], timeout=30).status_code in (200, 503)
        session = httpx.post(
            f"http://127.0.0.1:{port}/graphql",
            json={"query": "{ portalSession { expiresAt } }"},
            headers={"Authorization": f"Bearer {portal.group(2)}"},
            timeout=30,
        )
        assert session.json()["data"]["portalSession"]["expiresAt"]
        # and the settings that point the other commands at its stores, which create-account then uses
        exports = re.search(r"CLI:\s+export (.+)", output)
        assert exports is not None, output
        cli_env = {**env, **dict(pair.split("=", 1) for pair in shlex.split(exports.group(1)))}
        created = subprocess.run(
            [sys.executable, "-m", "webhooks_cli", "create-account", "Acme"],
            capture_output=True,
            text=True,
            env=cli_env,
            timeout=60,
        )
        assert created.returncode == 0, created.stderr
        other_key = json.loads(created.stdout)["apiKey"]
        answer = httpx.post(
            f"http://127.0.0.1:{port}/graphql",
            json={"query": "{ webhooks { edges { cursor } } }"},
            headers={"Authorization": f"Bearer {other_key}"},
            timeout=30,
        )
        assert answer.json()["data"]["webhooks"]["edges"] == []
        # when the user presses Ctrl-C
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        # then it exits cleanly and leaves no process behind
        assert proc.returncode == 0
        time.sleep(0.5)
        assert [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_dev_keeps_the_same_account_across_restarts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    keys = []
    for _ in range(2):
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKS_")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "webhooks_cli", "dev", "--port", str(port), "--data-dir", str(data)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        try:
            output = _read_until(proc, "Press Ctrl-C", timeout=90)
            found = re.search(r"API key:\s+(\S+)", output)
            assert found is not None
            keys.append(found.group(1))
            response = httpx.post(
                f"http://127.0.0.1:{port}/graphql",
                json={"query": "{ webhooks { edges { cursor } } }"},
                headers={"Authorization": f"Bearer {found.group(1)}"},
                timeout=30,
            )
            assert response.json()["data"]["webhooks"]["edges"] == []
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    assert keys[0] == keys[1]


class DevOutput:
    """The merged output of a `webhooks dev` process, read on a thread so async tests can wait for lines."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._proc = proc
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self.lines.append(line)

    async def wait_for(self, pattern: str, timeout: float = 90.0, after: int = 0) -> re.Match[str]:
        """The first line at index >= ``after`` matching ``pattern``."""
        async with asyncio.timeout(timeout):
            while True:
                for line in self.lines[after:]:
                    found = re.search(pattern, line)
                    if found:
                        return found
                if self._proc.poll() is not None and not self._thread.is_alive():
                    raise AssertionError("".join(self.lines) + f"\n(dev exited with {self._proc.returncode})")
                await asyncio.sleep(0.05)


def _start_dev(port: int, data_dir: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKS_")}
    return subprocess.Popen(
        [sys.executable, "-m", "webhooks_cli", "dev", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _worker_processes(dev: psutil.Process) -> list[psutil.Process]:
    return [c for c in dev.children() if "worker" in c.cmdline() and c.status() != psutil.STATUS_ZOMBIE]


async def test_dev_restarts_a_dead_worker_and_keeps_the_api_and_stores_up(
    tmp_path: Path, receiver: Receiver
) -> None:
    # given `webhooks dev` running, and a webhook pointing at a receiver
    port = free_port()
    proc = _start_dev(port, tmp_path / "d")
    output = DevOutput(proc)
    try:
        key = (await output.wait_for(r"API key:\s+(\S+)")).group(1)
        await output.wait_for("Press Ctrl-C")
        dev = psutil.Process(proc.pid)
        stores_and_api = {c.pid for c in dev.children()} - {w.pid for w in _worker_processes(dev)}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            gql = GraphQLClient(http, key)
            await create_webhook(gql, receiver.url("/dev-restart"))
            await publish(gql)
            await receiver.wait_for("/dev-restart", 1, timeout=60)
            (first_worker,) = _worker_processes(dev)

            # when the worker dies
            seen = len(output.lines)
            first_worker.kill()

            # then dev says so, waits a back-off and starts a new worker
            await output.wait_for(r"worker exited .*restarting it in \d", after=seen)
            restarted = int((await output.wait_for(r"worker restarted \(pid (\d+)\)", after=seen)).group(1))
            assert restarted != first_worker.pid
            # and the API and the stores are the same processes as before, still answering
            assert stores_and_api <= {c.pid for c in dev.children()}
            assert proc.poll() is None
            # and the new worker delivers what is published next
            await publish(gql)
            await receiver.wait_for("/dev-restart", 2, timeout=60)
        assert [w.pid for w in _worker_processes(dev)] == [restarted]
        # and Ctrl-C still stops everything cleanly
        proc.send_signal(signal.SIGINT)
        await asyncio.to_thread(proc.wait, 60)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _read_until(proc: subprocess.Popen[str], marker: str, timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line)
        if marker in line:
            return "".join(lines)
    raise AssertionError("".join(lines) or f"no output; exit code {proc.poll()}")


def _cli(settings: Settings, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "WEBHOOKS_MONGODB_URL": str(settings.mongodb_url),
        "WEBHOOKS_MONGODB_DATABASE": settings.mongodb_database,
        "WEBHOOKS_REDIS_URL": str(settings.redis_url),  # a revocation is published to the API processes
        "WEBHOOKS_QUEUE_NAME": settings.queue_name,
    }
    return subprocess.run(
        [sys.executable, "-m", "webhooks_cli", *args],
        capture_output=True,
        text=True,
        env=env,
        input=stdin,
        timeout=60,
    )


async def _auth_code(http: httpx.AsyncClient, key: str) -> str | None:
    """The error code ``{ webhooks }`` gets with ``key`` (None when it succeeds)."""
    response = await http.post(
        "/graphql",
        json={"query": "{ webhooks { edges { node { id } } } }"},
        headers={"Authorization": f"Bearer {key}"},
    )
    errors = response.json().get("errors") or []
    return errors[0]["extensions"]["code"] if errors else None


async def test_an_operator_can_add_a_publish_only_key_and_revoke_a_leaked_one(
    settings: Settings, http: httpx.AsyncClient
) -> None:
    # given an account made with `webhooks create-account`, whose key works against the running API
    created = _cli(settings, "create-account", "Leaky Corp")
    assert created.returncode == 0, created.stderr
    account = json.loads(created.stdout)
    leaked = account["apiKey"]
    assert await _auth_code(http, leaked) is None
    # when the operator adds a publish-only key for the account's backend
    added = _cli(settings, "create-api-key", account["accountId"], "--scope", "events:publish")
    assert added.returncode == 0, added.stderr
    publish_only = json.loads(added.stdout)
    assert publish_only["scopes"] == ["events:publish"]
    # and revokes the first key (given on standard input, never on the command line)
    revoked = _cli(settings, "revoke-api-key", stdin=leaked + "\n")
    assert revoked.returncode == 0, revoked.stderr
    assert leaked not in revoked.stdout + revoked.stderr
    # then the API stops accepting the revoked key (within the authentication cache's lifetime) ...
    deadline = time.monotonic() + 30
    while await _auth_code(http, leaked) != "UNAUTHENTICATED":
        assert time.monotonic() < deadline, "the revoked key is still accepted"
        await asyncio.sleep(0.2)
    # ... while the new key authenticates, with only its scope
    assert await _auth_code(http, publish_only["apiKey"]) == "FORBIDDEN"
    # and revoking it again, or an unknown account, is refused with a clear message
    again = _cli(settings, "revoke-api-key", stdin=leaked + "\n")
    assert again.returncode == 1 and "no active API key" in again.stderr
    unknown = _cli(settings, "create-api-key", "0123456789abcdef01234567")
    assert unknown.returncode == 1 and "no account" in unknown.stderr


def test_dev_on_a_port_another_server_holds_stops_before_starting_and_sends_it_nothing(
    tmp_path: Path,
) -> None:
    # given another HTTP server already listening on the port, recording what it is sent
    seen: list[str] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            self.send_response(404)
            self.end_headers()

        do_GET = do_POST

        def log_message(self, *args: object) -> None:
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    port = other.server_address[1]
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKS_")}
        # when `webhooks dev` is started on that port
        result = subprocess.run(
            [sys.executable, "-m", "webhooks_cli", "dev", "--port", str(port), "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    finally:
        other.shutdown()
        other.server_close()
    # then it says the port is taken and exits non-zero, without claiming to run or sending the other
    # server anything (the dev API key least of all)
    assert result.returncode != 0
    assert "is running" not in result.stdout, result.stdout
    assert "error:" in result.stderr and f"{port}" in result.stderr, result.stderr
    assert seen == []
