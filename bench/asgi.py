"""The API process for the benchmarks: ``graphql_api.app.create_app`` plus one plain Starlette route.

``GET /bench/deliveries`` answers with the same 20 deliveries (and their attempts) that
``deliveries(first: 20) { ... attempts { number statusCode } }`` returns, straight from MongoDB as JSON:
the same authentication (API key lookup), the same repository page query, then one ``$in`` query for the
attempts (embedded in their delivery documents; a delivery not written yet has none). It is P5's
baseline: what the process can do without GraphQL. Run: ``python -m bench.asgi PORT``.
"""

from __future__ import annotations

import sys
from datetime import timedelta

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from graphql_api.app import create_app
from graphql_api.context import bearer_token
from webhooks.core import Core
from webhooks.db import raw_collections
from webhooks.settings import get_settings
from webhooks.timeutil import utcnow
from webhooks_cli.main import server_options


async def plain_deliveries(request: Request) -> Response:
    core: Core = request.app.state.core
    token = bearer_token(request.headers.get("authorization"))
    who = await core.api_keys.authenticate(token) if token else None
    if who is None:
        return Response(status_code=401)
    oldest = utcnow() - timedelta(days=core.settings.delivery_retention_days + 1)
    page = await core.delivery_repo.page(
        who.account_id, webhook_id=None, status=None, event=None, first=20, after=None, oldest=oldest
    )
    ids = [d.id for d in page.items]
    attempts: dict[object, list[dict[str, object]]] = {i: [] for i in ids}
    cursor = raw_collections(core).deliveries.find(
        {"_id": {"$in": ids}}, {"attempts.number": 1, "attempts.status_code": 1}
    )
    for d in await cursor.to_list():
        attempts[d["_id"]] = [
            {"number": a["number"], "statusCode": a.get("status_code")} for a in d.get("attempts") or ()
        ]
    edges = [
        {
            "node": {
                "id": str(d.id),
                "status": d.status.value,
                "attempts": sorted(attempts[d.id], key=lambda a: a["number"]),  # type: ignore[arg-type,return-value]
            }
        }
        for d in page.items
    ]
    return Response(orjson.dumps({"data": {"deliveries": {"edges": edges}}}), media_type="application/json")


def build() -> Starlette:
    app = create_app(get_settings())
    app.router.routes.insert(0, Route("/bench/deliveries", plain_deliveries, methods=["GET"]))
    return app


def main() -> None:
    import uvicorn

    from webhooks.logging_setup import configure_logging

    configure_logging()
    # the same server options as `webhooks serve`, with a quicker shutdown
    options = server_options(get_settings()) | {"timeout_graceful_shutdown": 2}
    uvicorn.run(build(), host="127.0.0.1", port=int(sys.argv[1]), **options)


if __name__ == "__main__":
    main()
