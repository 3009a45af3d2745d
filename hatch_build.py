"""Wheel build hook: a wheel built from a checkout carries the browser assets (GraphiQL and the customer
portal), which are installed from the npm registry at build time and never committed.

When ``graphql_api/static/vendor`` holds no complete build, this runs ``build_assets`` from
``graphql_api/graphiql.py`` (it needs ``npm``) and fails the build if that fails, rather than producing a
wheel whose GraphiQL falls back to a CDN and whose portal cannot start. Editable installs (``uv sync``)
use the source tree as it is and skip this.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class BrowserAssetsHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version == "editable":
            return
        root = Path(self.root)
        spec = importlib.util.spec_from_file_location("_hb_graphiql", root / "graphql_api" / "graphiql.py")
        assert spec is not None and spec.loader is not None
        graphiql = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(graphiql)
        vendor = root / "graphql_api" / "static" / "vendor"
        wanted = [dest for _, dest in graphiql.ASSETS + graphiql.PORTAL_ASSETS] + [graphiql.BUILD_STAMP]
        if all((vendor / name).is_file() for name in wanted):
            return
        logging.basicConfig(level=logging.INFO)
        if not graphiql.build_assets(root):
            raise RuntimeError("the browser assets could not be built with npm (see the log above)")
