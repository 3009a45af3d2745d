"""A bad WEBHOOKS_* value stops every command with one line naming the variable: real subprocesses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from webhooks_cli.embedded import free_port

COMMANDS = {
    "export-schema": ["export-schema"],
    "create-account": ["create-account", "Acme"],
    "serve": ["serve", "--port", "{port}"],
    "worker": ["worker"],
    "worker --check": ["worker", "--check"],
    "rotate-encryption-key": ["rotate-encryption-key"],
}

# (command, variable, bad value): wrong types, out of range, not finite, empty, malformed URLs and keys.
UNREACHABLE_MONGODB = "mongodb://127.0.0.1:1/?directConnection=true&serverSelectionTimeoutMS=1000"
CASES = [
    ("export-schema", "WEBHOOKS_DELIVERY_TIMEOUT", "ten"),
    ("create-account", "WEBHOOKS_MAX_TOKENS", "5"),
    ("serve", "WEBHOOKS_LOG_LEVEL", "verbose"),
    ("worker", "WEBHOOKS_ALLOW_HTTP", "maybe"),
    ("worker", "WEBHOOKS_RETRY_SCHEDULE", "0,1,nan"),
    ("worker", "WEBHOOKS_DELIVERY_TIMEOUT", "inf"),
    ("serve", "WEBHOOKS_EVENT_HANDOFF_TTL", "inf"),
    ("serve", "WEBHOOKS_REDIS_URL", "not-a-url"),
    ("serve", "WEBHOOKS_REDIS_URL", ""),
    ("worker --check", "WEBHOOKS_REDIS_URL", "not-a-url"),
    ("serve", "WEBHOOKS_MONGODB_URL", "http://127.0.0.1:27017/"),
    ("create-account", "WEBHOOKS_MONGODB_DATABASE", ""),
    ("worker", "WEBHOOKS_SECRET_KEYS", "not-a-fernet-key"),
    ("serve", "WEBHOOKS_SECRET_KEYS", "not-a-fernet-key"),
    ("serve", "WEBHOOKS_REDIS_SENTINELS", "sentinel-0:26379"),
    ("worker", "WEBHOOKS_EGRESS_PROXY", "not a url"),
    ("serve", "WEBHOOKS_PORTAL_FRAME_ANCESTORS", "javascript:x"),
    ("serve", "WEBHOOKS_ALLOWED_ORIGINS", "app.example.com"),
    ("serve", "WEBHOOKS_PUBLIC_URL", "webhooks.example.com"),
    # no WEBHOOKS_SECRET_KEYS, and a data directory where the generated key cannot be kept
    ("worker", "WEBHOOKS_DATA_DIR", "/proc/no-such-dir"),
    ("serve", "WEBHOOKS_DATA_DIR", "/proc/no-such-dir"),
    # well formed, but nothing answers there
    # (the URL's own server selection timeout is honoured: the command gives up after 1 s, not 10)
    ("create-account", "WEBHOOKS_MONGODB_URL", UNREACHABLE_MONGODB),
    ("rotate-encryption-key", "WEBHOOKS_MONGODB_URL", UNREACHABLE_MONGODB),
]


def create_account(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``webhooks create-account Acme`` run as an operator would, with ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "webhooks_cli", "create-account", "Acme"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def working_env(mongodb_url: str, redis_url: str, tmp_path: Path, **settings: str) -> dict[str, str]:
    """The environment of a command with working stores and its own key, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKS_")}
    return env | {
        "WEBHOOKS_MONGODB_URL": mongodb_url,
        "WEBHOOKS_REDIS_URL": redis_url,
        "WEBHOOKS_DATA_DIR": str(tmp_path),
        "WEBHOOKS_QUEUE_NAME": f"settings-errors:{tmp_path.name}",
        "WEBHOOKS_SECRET_KEYS": Fernet.generate_key().decode(),
        **settings,
    }


@pytest.mark.parametrize(("command", "variable", "value"), CASES, ids=[f"{c}-{v}={x}" for c, v, x in CASES])
def test_a_bad_setting_stops_the_command_with_one_line_naming_it(
    command: str, variable: str, value: str, mongodb_url: str, redis_url: str, tmp_path: Path
) -> None:
    # given working stores, and one setting with a bad value
    env = working_env(mongodb_url, redis_url, tmp_path, **{variable: value})
    if variable == "WEBHOOKS_DATA_DIR":
        del env["WEBHOOKS_SECRET_KEYS"]  # the key is then generated there
    args = [a.format(port=free_port()) for a in COMMANDS[command]]
    # when the command starts
    result = subprocess.run(
        [sys.executable, "-m", "webhooks_cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    # then it exits non-zero before doing anything, with one line on stderr that names the variable,
    # no traceback, and never a key's value
    assert result.returncode != 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert variable in lines[0], lines[0]
    if variable == "WEBHOOKS_SECRET_KEYS":
        assert value not in result.stderr


def test_a_worker_whose_metrics_port_is_taken_stops_with_one_line_naming_it(
    mongodb_url: str, redis_url: str, tmp_path: Path
) -> None:
    # given working stores, and WEBHOOKS_WORKER_METRICS_PORT on a port another process listens on
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = working_env(
            mongodb_url,
            redis_url,
            tmp_path,
            WEBHOOKS_LOG_FORMAT="text",
            WEBHOOKS_WORKER_METRICS_PORT=str(port),
        )
        # when a worker starts
        proc = subprocess.Popen(
            [sys.executable, "-m", "webhooks_cli", "worker"],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        try:
            assert proc.stderr is not None
            lines = []
            for line in proc.stderr:  # until it exits, or says it started (then it runs without its metrics)
                lines.append(line.rstrip("\n"))
                if "worker started" in line:
                    break
            started = any("worker started" in line for line in lines)
            returncode = None if started else proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)
    # then it does not start: it exits non-zero with one line naming the setting, not as a lost Redis
    assert returncode not in (None, 0), "\n".join(lines)
    assert lines == [lines[-1]] and lines[-1].startswith("error: "), "\n".join(lines)
    assert "WEBHOOKS_WORKER_METRICS_PORT" in lines[-1]


def test_a_sentinel_deployments_redis_url_without_a_host_is_accepted(
    mongodb_url: str, redis_url: str, tmp_path: Path
) -> None:
    # given a Redis Sentinel deployment whose WEBHOOKS_REDIS_URL lends only its password and database (the
    # host is ignored with sentinels, so it names none; redis-py and arq read no host as localhost)
    env = working_env(
        mongodb_url,
        redis_url,
        tmp_path,
        WEBHOOKS_REDIS_URL="redis://:sentinel-password@/2",
        WEBHOOKS_REDIS_SENTINELS="127.0.0.1:26379,127.0.0.1:26380",
        WEBHOOKS_REDIS_SENTINEL_MASTER="mymaster",
    )
    # when an operator runs a command
    result = create_account(env)
    # then the settings are accepted and the command does its work
    assert result.returncode == 0, result.stderr
    assert "accountId" in result.stdout or "apiKey" in result.stdout, result.stdout


def test_a_user_agent_with_non_ascii_letters_is_accepted(
    mongodb_url: str, redis_url: str, tmp_path: Path
) -> None:
    # given a WEBHOOKS_USER_AGENT that names the operator with a non-ASCII letter (aiohttp sends it as
    # UTF-8, which a header value may carry: RFC 9110 obs-text), as deliveries carried it before
    env = working_env(mongodb_url, redis_url, tmp_path, WEBHOOKS_USER_AGENT="Société-Générale-Hooks/1.0")
    # when an operator runs a command
    result = create_account(env)
    # then the setting is accepted
    assert result.returncode == 0, result.stderr


def test_a_user_agent_that_would_split_the_header_is_refused(
    mongodb_url: str, redis_url: str, tmp_path: Path
) -> None:
    # given a WEBHOOKS_USER_AGENT holding a line break
    env = working_env(mongodb_url, redis_url, tmp_path, WEBHOOKS_USER_AGENT="Hooks/1.0\r\nX-Evil: 1")
    # when an operator runs a command
    result = create_account(env)
    # then it stops with one line naming the variable
    assert result.returncode == 1 and "WEBHOOKS_USER_AGENT" in result.stderr, result.stderr
