"""The `webhooks` command as a user runs it: real subprocesses."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from graphql_api.schema import schema
from webhooks.embedded import free_port
from webhooks.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_the_committed_schema_matches_the_code() -> None:
    # given the schema file clients read, when compared with the code's schema, then they are identical
    committed = (ROOT / "schema.graphql").read_text()
    assert committed == schema.as_str() + "\n", (
        "schema.graphql is stale: run `webhooks export-schema -o schema.graphql`"
    )


def test_export_schema_prints_the_schema() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "webhooks.cli", "export-schema"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout == schema.as_str() + "\n"


def test_create_account_prints_the_account_id_and_a_key(settings: Settings) -> None:
    env = {
        **os.environ,
        "WEBHOOKS_MONGODB_URL": str(settings.mongodb_url),
        "WEBHOOKS_MONGODB_DATABASE": settings.mongodb_database,
    }
    result = subprocess.run(
        [sys.executable, "-m", "webhooks.cli", "create-account", "Acme Recruiting"],
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
        [sys.executable, "-m", "webhooks.cli", "create-account", "Acme"],
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
            "webhooks.cli",
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
        assert len(response.json()["data"]["eventTypes"]) == 16
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
            [sys.executable, "-m", "webhooks.cli", "dev", "--port", str(port), "--data-dir", str(data)],
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
