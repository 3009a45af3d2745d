"""docker-compose.yml and the Dockerfile: the services are wired as documented, and every command they
run is a real ``webhooks`` entry point (checked against the CLI parser, not by string matching)."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
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


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _healthcheck_argv(service: dict[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return shlex.split(test)
    kind, *rest = (str(part) for part in test)
    if kind == "CMD-SHELL":
        return shlex.split(" ".join(rest))
    assert kind == "CMD", f"unexpected healthcheck form {test!r}"
    return rest


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): str(value) for key, value in env.items()}


def _console_scripts() -> set[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return set(pyproject["project"]["scripts"])


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if raw.lstrip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    result = []
    for line in lines:
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            result.append((keyword.upper(), args.strip()))
    return result


def _dockerfile_cmd() -> list[str]:
    cmds = [args for keyword, args in _dockerfile_instructions() if keyword == "CMD"]
    assert cmds, "the Dockerfile has no CMD"
    args = cmds[-1]
    if args.startswith("["):
        parsed = json.loads(args)
        assert isinstance(parsed, list)
        return [str(part) for part in parsed]
    return shlex.split(args)


def assert_entry_point(argv: list[str], where: str) -> None:
    """``argv`` runs an installed console script whose arguments the CLI parser accepts."""
    assert argv, f"{where}: empty command"
    assert argv[0] == "webhooks", f"{where}: {argv[0]!r} is not the `webhooks` command"
    assert argv[0] in _console_scripts(), f"{where}: {argv[0]!r} is not in pyproject's [project.scripts]"
    try:
        build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"{where}: `{shlex.join(argv)}` is rejected by the CLI parser (exit {exc.code})")


# ----------------------------------------------------------------------------------------- services


def test_services_exist() -> None:
    services = _services()
    for name in (*STORES, *APP_SERVICES):
        assert name in services, f"service {name!r} is missing"


def test_official_store_images() -> None:
    services = _services()
    assert services["mongodb"]["image"] == "mongo:8.0"
    assert services["redis"]["image"] == "redis:7.4"


def test_redis_persists_and_never_evicts() -> None:
    argv = _argv(_services()["redis"]["command"])
    text = " ".join(argv)
    assert re.search(r"--appendonly\s+yes\b", text), f"appendonly is not enabled: {text}"
    assert re.search(r"--maxmemory-policy\s+noeviction\b", text), f"noeviction is not set: {text}"


def test_stores_keep_data_in_volumes() -> None:
    compose = _compose()
    services = compose["services"]
    declared = set(compose.get("volumes") or {})
    for name, target in (("mongodb", "/data/db"), ("redis", "/data")):
        mounts = [str(v) for v in services[name].get("volumes", [])]
        assert any(m.endswith(f":{target}") and m.split(":")[0] in declared for m in mounts), (
            f"{name}: no named volume mounted at {target}: {mounts}"
        )


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_waits_for_healthy_stores(name: str) -> None:
    depends_on = _services()[name].get("depends_on")
    assert isinstance(depends_on, dict), f"{name}: depends_on must be the long form with conditions"
    for store in STORES:
        assert store in depends_on, f"{name} does not depend on {store}"
        assert depends_on[store].get("condition") == "service_healthy", (
            f"{name} does not wait for {store} to be healthy"
        )


@pytest.mark.parametrize("name", [*STORES, *APP_SERVICES])
def test_every_service_has_a_healthcheck(name: str) -> None:
    healthcheck = _services()[name].get("healthcheck")
    assert isinstance(healthcheck, dict), f"{name} has no healthcheck"
    assert not healthcheck.get("disable"), f"{name}: healthcheck is disabled"
    assert _healthcheck_argv(_services()[name]), f"{name}: empty healthcheck"


def test_store_healthchecks_ping() -> None:
    services = _services()
    mongo = _healthcheck_argv(services["mongodb"])
    assert mongo[0] == "mongosh" and "ping" in " ".join(mongo)
    assert _healthcheck_argv(services["redis"]) == ["redis-cli", "ping"]


def test_worker_scales() -> None:
    worker = _services()["worker"]
    assert not worker.get("ports"), "a fixed host port stops `docker compose up --scale worker=N`"
    assert "container_name" not in worker, "a container_name stops `docker compose up --scale worker=N`"


def test_api_publishes_the_port_it_serves_on() -> None:
    api = _services()["api"]
    args = build_parser().parse_args(_argv(api["command"])[1:])
    container_ports = {str(p).rsplit(":", 1)[-1].split("/")[0] for p in api.get("ports", [])}
    assert str(args.port) in container_ports, f"api serves on {args.port} but publishes {container_ports}"
    assert args.host == "0.0.0.0", "inside a container the API must listen on all interfaces"


def test_api_healthcheck_uses_readiness() -> None:
    argv = _healthcheck_argv(_services()["api"])
    port = build_parser().parse_args(_argv(_services()["api"]["command"])[1:]).port
    assert f"http://127.0.0.1:{port}/readyz" in " ".join(argv)
    assert argv[0] == "python", "the slim image has no curl; use python's urllib"


def test_api_serves_readiness_route() -> None:
    from graphql_api.app import create_app

    settings = Settings(mongodb_url="mongodb://127.0.0.1:1", redis_url="redis://127.0.0.1:1/0")
    paths = {getattr(route, "path", None) for route in create_app(settings).routes}
    assert {"/healthz", "/readyz"} <= paths, f"routes: {paths}"


# --------------------------------------------------------------------------------------- environment


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_environment(name: str) -> None:
    env = _environment(_services()[name])
    assert env["WEBHOOKS_MONGODB_URL"] == "mongodb://mongodb:27017"
    assert env["WEBHOOKS_REDIS_URL"] == "redis://redis:6379/0"
    # Required from the environment / .env, with a message saying how to generate a key.
    secret = env["WEBHOOKS_SECRET_KEYS"]
    assert secret.startswith("${WEBHOOKS_SECRET_KEYS:?") and "Fernet.generate_key()" in secret


def test_api_and_worker_share_their_configuration() -> None:
    services = _services()
    assert _environment(services["api"]) == _environment(services["worker"])
    assert services["api"].get("build") == services["worker"].get("build") == "."
    assert services["api"].get("image") == services["worker"].get("image")


@pytest.mark.parametrize("name", APP_SERVICES)
def test_environment_names_are_settings(name: str) -> None:
    known = {f"WEBHOOKS_{field.upper()}" for field in Settings.model_fields}
    unknown = set(_environment(_services()[name])) - known
    assert not unknown, f"{name}: not settings (typo?): {sorted(unknown)}"


# ---------------------------------------------------------------------------------------- commands


@pytest.mark.parametrize("name", APP_SERVICES)
def test_service_command_is_an_entry_point(name: str) -> None:
    assert_entry_point(_argv(_services()[name]["command"]), f"services.{name}.command")


def _webhooks_healthchecks() -> list[Any]:
    params: list[Any] = []
    for name, service in _services().items():
        if "healthcheck" not in service:
            continue
        argv = _healthcheck_argv(service)
        if argv and argv[0] == "webhooks":
            params.append(pytest.param(name, argv, id=name))
    return params


@pytest.mark.parametrize(("name", "argv"), _webhooks_healthchecks())
def test_healthcheck_command_is_an_entry_point(name: str, argv: list[str]) -> None:
    assert_entry_point(argv, f"services.{name}.healthcheck")


def test_worker_healthcheck_calls_the_cli() -> None:
    assert _healthcheck_argv(_services()["worker"]) == ["webhooks", "worker", "--check"]


def test_dockerfile_cmd_is_an_entry_point() -> None:
    argv = _dockerfile_cmd()
    assert_entry_point(argv, "Dockerfile CMD")
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve" and args.host == "0.0.0.0" and args.port == 8000


def test_dockerfile_runs_as_non_root_and_exposes_the_api() -> None:
    instructions = _dockerfile_instructions()
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"
    assert any(keyword == "EXPOSE" and "8000" in args.split() for keyword, args in instructions)


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = set((ROOT / ".dockerignore").read_text(encoding="utf-8").split())
    for entry in (".git", ".venv", "uv.lock", ".env", "frontend/node_modules"):
        assert entry in ignored, f".dockerignore does not exclude {entry}"
