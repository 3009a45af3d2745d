"""docker-compose.yml and the Dockerfile.

The compose file is validated against the Compose specification's JSON schema (``check-jsonschema``'s
vendored copy, ``vendor.compose-spec``: offline, Apache-2.0), so structure, keys and enum values are the
schema's business. The tests below check only what the schema cannot: the properties this deployment
relies on (health-gated start-up, stores reachable only inside the network, a scalable worker, durable
Redis) and that every command the files run is a real ``webhooks`` entry point (checked against the CLI
parser, not by string matching).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from webhooks.settings import Settings
from webhooks_cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

STORES = ("mongodb", "redis")
APP_SERVICES = ("api", "worker")


def validate_compose(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _services() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    services: dict[str, dict[str, Any]] = data["services"]
    return services


def _argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _healthcheck_argv(service: dict[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return shlex.split(test)
    kind, *rest = (str(part) for part in test)
    return shlex.split(" ".join(rest)) if kind == "CMD-SHELL" else rest


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): str(value) for key, value in env.items()}


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    result = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, args = line.strip().partition(" ")
            result.append((keyword.upper(), args.strip()))
    return result


def parse_entry_point(argv: list[str], where: str) -> Any:
    """``argv`` runs the `webhooks` console script with arguments its parser accepts; return them parsed."""
    assert argv and argv[0] == "webhooks", f"{where}: {argv!r} is not the `webhooks` command"
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"{where}: `{shlex.join(argv)}` is rejected by the CLI parser (exit {exc.code})")


# ------------------------------------------------------------------------------------- the schema


def test_the_compose_file_is_valid_under_the_compose_specification() -> None:
    result = validate_compose(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_broken_compose_file(tmp_path: Path) -> None:
    # given the same file with a misspelled depends_on condition, then the validator refuses it
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("service_healthy", "service_happy"))
    result = validate_compose(broken)
    assert result.returncode == 1
    assert "service_happy" in result.stdout


# --------------------------------------------------------------------------- what the deployment needs


@pytest.mark.parametrize("name", [*STORES, *APP_SERVICES])
def test_every_service_has_a_healthcheck(name: str) -> None:
    healthcheck = _services()[name]["healthcheck"]
    assert not healthcheck.get("disable") and _healthcheck_argv(_services()[name])


@pytest.mark.parametrize("name", APP_SERVICES)
def test_the_api_and_worker_start_only_once_the_stores_are_healthy(name: str) -> None:
    depends_on = _services()[name]["depends_on"]
    assert {store: depends_on[store]["condition"] for store in STORES} == dict.fromkeys(
        STORES, "service_healthy"
    )


def test_only_the_api_publishes_a_port_and_the_worker_scales() -> None:
    services = _services()
    assert [name for name, service in services.items() if service.get("ports")] == ["api"]
    assert "container_name" not in services["worker"]  # would stop `docker compose up --scale worker=N`


def test_redis_keeps_the_queue_on_disk_and_never_evicts_it() -> None:
    args = _argv(_services()["redis"]["command"])
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"


def test_the_api_serves_where_it_is_published_and_its_healthcheck_asks_for_readiness() -> None:
    api = _services()["api"]
    args = parse_entry_point(_argv(api["command"]), "services.api.command")
    assert args.host == "0.0.0.0"
    assert {str(p).rsplit(":", 1)[-1] for p in api["ports"]} == {str(args.port)}
    assert f"http://127.0.0.1:{args.port}/readyz" in " ".join(_healthcheck_argv(api))


@pytest.mark.parametrize("name", APP_SERVICES)
def test_the_app_environment_names_real_settings_and_requires_the_secret_keys(name: str) -> None:
    env = _environment(_services()[name])
    known = {f"WEBHOOKS_{field.upper()}" for field in Settings.model_fields}
    assert set(env) <= known, sorted(set(env) - known)
    assert env["WEBHOOKS_SECRET_KEYS"].startswith("${WEBHOOKS_SECRET_KEYS:?")


def test_every_webhooks_command_is_an_entry_point() -> None:
    worker = _services()["worker"]
    assert parse_entry_point(_argv(worker["command"]), "worker.command").command == "worker"
    assert parse_entry_point(_healthcheck_argv(worker), "worker.healthcheck").check is True
    cmd = next(args for keyword, args in reversed(_dockerfile_instructions()) if keyword == "CMD")
    served = parse_entry_point(json.loads(cmd), "Dockerfile CMD")
    assert (served.command, served.host, served.port) == ("serve", "0.0.0.0", 8000)


def test_the_image_runs_as_a_non_root_user() -> None:
    users = [args for keyword, args in _dockerfile_instructions() if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = set((ROOT / ".dockerignore").read_text(encoding="utf-8").split())
    assert {".git", ".venv", "uv.lock", ".env", "frontend/node_modules"} <= ignored
