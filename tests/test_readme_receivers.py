"""The README's Node.js receivers, run as written (Express from the npm registry) on real deliveries."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import make_settings
from tests.delivery_support import create_webhook, publish, wait_for_status
from tests.support import Stack, require_tool, run_stack
from webhooks_cli.embedded import free_port, spawn, stop, wait_for_port

README = Path(__file__).parent.parent / "README.md"
PACKAGES = {"express": "4.22.3", "standardwebhooks": "1.1.1"}


def readme_js(after: str) -> str:
    """The first ```js block of the README after the line ``after``."""
    text = README.read_text(encoding="utf-8")
    start = text.index(after)
    found = re.search(r"```js\n(.*?)```", text[start:], re.DOTALL)
    assert found, f"no js block after {after!r}"
    return found.group(1)


@pytest.fixture(scope="module")
def node_modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with Express and standardwebhooks installed from the npm registry."""
    npm = require_tool("npm", hint="apt-get install npm")
    folder = tmp_path_factory.mktemp("readme-node")
    (folder / "package.json").write_text('{"private": true}\n', encoding="utf-8")
    packages = [f"{name}@{version}" for name, version in PACKAGES.items()]
    subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--silent", *packages],
        cwd=folder,
        check=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    return folder


@pytest.fixture(scope="module")
async def stack(mongodb_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    # the default payload limit; one attempt per delivery: the receiver's first answer is the outcome
    settings = make_settings(mongodb_url, tmp_path_factory.mktemp("readme"), retry_schedule=(0.0,))
    async with run_stack(settings) as running:
        yield running


EXAMPLES = {
    "raw body": readme_js("Node.js (Express):"),
    # a fragment of an app: the README shows only the route
    "standardwebhooks": "const express = require('express');\nconst app = express();\n"
    + readme_js("Node.js (`npm install standardwebhooks`):"),
}


@pytest.mark.parametrize("example", list(EXAMPLES))
async def test_the_readmes_node_receiver_accepts_an_event_of_the_largest_size_published(
    stack: Stack, node_modules: Path, example: str
) -> None:
    # given the README's Node.js receiver, as written, listening with the webhook's secret
    account = await stack.account()
    port = free_port()
    _, secret = await create_webhook(account.gql, f"http://127.0.0.1:{port}/webhook")
    script = node_modules / f"receiver-{port}.js"
    script.write_text(EXAMPLES[example] + f"\napp.listen({port}, '127.0.0.1');\n", encoding="utf-8")
    node = require_tool("node", hint="apt-get install nodejs")
    proc = spawn([node, str(script)], env={"WEBHOOK_SECRET": secret}, quiet=True)
    try:
        await asyncio.to_thread(wait_for_port, port, proc, script.name)
        # when an event is published whose body is just under the payload limit
        limit = stack.settings.max_payload_bytes
        published = await publish(account.gql, details={"note": "x" * (limit - 1024)})
        assert published["errors"] == [], published["errors"]
        done = await wait_for_status(
            account.gql, published["event"]["deliveries"][0]["id"], "SUCCEEDED", "FAILED"
        )
        # then the receiver verified and accepted it
        (attempt,) = done["attempts"]
        assert (attempt["statusCode"], attempt["responseBody"]) == (200, "OK"), attempt["statusCode"]
    finally:
        stop(proc)
