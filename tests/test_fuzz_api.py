"""Property-based fuzzing of the GraphQL API (hypothesis-graphql): valid and schema-violating operations.

For every generated query or mutation, sent over real HTTP to the real API (SecantusDB, Redis): no 5xx, no
``INTERNAL_SERVER_ERROR``, and no log line carries a string the operation contained. Bounded to a fixed
number of examples (well under a minute here).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import graphql
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import Mode, from_schema, nodes

from graphql_api.schema import build_schema
from tests.support import Account
from webhooks.settings import Settings

EXAMPLES = 80
MIN_TRACKED_LENGTH = 8  # shorter generated strings could occur in a log line by coincidence

_offsets = st.integers(min_value=-23, max_value=23).map(lambda h: timezone(timedelta(hours=h)))
DATETIMES = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=_offsets),
    st.sampled_from([datetime(1960, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC)]),
).map(lambda d: nodes.String(d.isoformat()))
JSON_VALUES = st.one_of(
    st.integers().map(nodes.Int),
    st.text(max_size=30).map(nodes.String),
    st.floats(allow_nan=False, allow_infinity=False).map(nodes.Float),
    st.booleans().map(nodes.Boolean),
)
CUSTOM_SCALARS = {"DateTime": DATETIMES, "JSON": JSON_VALUES}


def _operations() -> st.SearchStrategy[str]:
    sdl = build_schema(Settings()).as_str()
    return st.one_of(
        from_schema(sdl, custom_scalars=CUSTOM_SCALARS, mode=Mode.POSITIVE),
        from_schema(sdl, custom_scalars=CUSTOM_SCALARS, mode=Mode.NEGATIVE),
    )


def tracked_strings(query: str) -> set[str]:
    """The string values the operation carries that are long enough to recognise in a log."""
    found: set[str] = set()

    class Strings(graphql.Visitor):
        def enter_string_value(self, node: graphql.StringValueNode, *_: Any) -> None:
            if len(node.value.strip()) >= MIN_TRACKED_LENGTH:
                found.add(node.value.strip())

    graphql.visit(graphql.parse(query), Strings())
    return found


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")
    return "\n".join(formatter.format(r) for r in caplog.records)


@pytest.mark.timeout(300)  # some generated operations resolve generated host names (the SSRF check)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same operations in every run: CI is reproducible
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(query=_operations())
async def test_generated_operations_never_fail_the_server_or_reach_the_logs(
    http: httpx.AsyncClient, account: Account, caplog: pytest.LogCaptureFixture, query: str
) -> None:
    caplog.set_level(logging.INFO)
    caplog.clear()
    # when
    response = await http.post(
        "/graphql", json={"query": query}, headers={"Authorization": f"Bearer {account.api_key}"}
    )
    # then
    assert response.status_code < 500, (query, response.text)
    errors = response.json().get("errors") or []
    codes = {(e.get("extensions") or {}).get("code") for e in errors}
    assert "INTERNAL_SERVER_ERROR" not in codes, (query, errors)
    text = log_text(caplog)
    leaked = [s for s in tracked_strings(query) if s in text]
    assert leaked == [], (query, leaked)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], text
